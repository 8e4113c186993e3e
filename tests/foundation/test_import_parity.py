"""Logits parity with transformers.LlamaForCausalLM for every import layout (HF single/sharded/bin, Meta)."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megatron_moe.config import Config
from megatron_moe.construct.dense import load_dense_into_model, open_dense
from megatron_moe.model import build_model

from _meta_layout import write_meta


def tiny_hf(kv_heads: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, vocab_size=320, max_position_embeddings=64, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF zero-inits nothing important, but make norms non-trivial too
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


def ours_from(path) -> tuple:
    reader = open_dense(path)
    cfg = Config(model=reader.config)
    model = build_model(cfg).eval()
    load_dense_into_model(model, reader)
    return model, reader


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin", "sharded-bin", "meta1", "meta2"])
def test_logits_match_transformers(tmp_path, kv_heads, layout):
    hf = tiny_hf(kv_heads)
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
    if layout == "safetensors":
        hf.save_pretrained(tmp_path)
    elif layout == "sharded":
        hf.save_pretrained(tmp_path, max_shard_size="40KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    elif layout == "bin":
        hf.config.save_pretrained(tmp_path)  # transformers 5 writes no .bin: write it as older tools did
        torch.save({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "pytorch_model.bin")
    elif layout == "sharded-bin":  # pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json (4.x layout)
        hf.config.save_pretrained(tmp_path)
        names = list(hf.state_dict())
        groups = [names[: len(names) // 2], names[len(names) // 2:]]
        weight_map = {}
        for i, group in enumerate(groups):
            fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
            torch.save({k: hf.state_dict()[k].contiguous() for k in group}, tmp_path / fname)
            weight_map.update({k: fname for k in group})
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        write_meta(hf, tmp_path, num_shards=int(layout[-1]))
    model, reader = ours_from(tmp_path)
    assert reader.config.kv_heads == kv_heads
    with torch.no_grad():
        got = model(ids)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4


def test_meta_rotary_permutation_is_applied(tmp_path):
    """Without the q/k permutation the Meta import would differ: check the reader really permutes."""
    hf = tiny_hf(2)
    write_meta(hf, tmp_path / "meta", num_shards=2)
    hf_q = hf.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    raw = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)["layers.0.attention.wq.weight"]
    assert not torch.equal(raw, hf_q[: raw.shape[0]])
    reader = open_dense(tmp_path / "meta")
    assert torch.equal(reader.get("layers.0.attn.wq.weight"), hf_q)
    assert json.loads((tmp_path / "meta" / "params.json").read_text())["n_kv_heads"] == 2
