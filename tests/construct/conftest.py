"""Tiny random LLaMA checkpoints (HF via transformers, Meta via meta_llama.save_meta_checkpoint)."""
import json

import pytest
import torch

TINY = dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=False)


def make_hf_llama(path, seed=0, **over):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**TINY, **over})
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # larger than HF's 0.02 init so that the layers matter in the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.fixture(scope="session")
def hf_dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "hf"
    make_hf_llama(path)
    return path


@pytest.fixture(scope="session")
def calib_jsonl(tmp_path_factory):
    """Pre-tokenised calibration documents (no tokenizer needed)."""
    path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    g = torch.Generator().manual_seed(0)
    with path.open("w") as fh:
        for d in range(24):
            n = 20 + d % 7
            # documents of two styles so that clusters exist: low ids vs high ids
            lo = 3 if d % 2 else 64
            ids = [1] + torch.randint(lo, lo + 60, (n,), generator=g).tolist()
            fh.write(json.dumps({"input_ids": ids}) + "\n")
    return path
