"""Tiny models of every supported dense family, built with transformers' own config and model classes and saved
with save_pretrained (the independent reference for every family test). Weights are non-trivial: larger than
HF's init, random norms, non-zero biases."""
import json
from pathlib import Path

import torch

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=160, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
# name -> (transformers config class, config kwargs, rope kwargs)
FAMILIES = {
    "llama2": ("LlamaConfig", dict(rms_norm_eps=1e-5), dict(rope_theta=10000.0)),
    "llama3": ("LlamaConfig", dict(rms_norm_eps=1e-5), dict(rope_theta=500000.0, rope_scaling=LLAMA3_ROPE)),
    "llama3.2-tied": ("LlamaConfig", dict(rms_norm_eps=1e-5, tie_word_embeddings=True, head_dim=32),
                      dict(rope_theta=500000.0, rope_scaling={**LLAMA3_ROPE, "factor": 32.0})),
    "llama-yarn": ("LlamaConfig", dict(rms_norm_eps=1e-5),
                   dict(rope_theta=10000.0, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 64})),
    "llama-linear": ("LlamaConfig", dict(), dict(rope_theta=10000.0, rope_scaling={"rope_type": "linear",
                                                                                    "factor": 2.0})),
    "mistral": ("MistralConfig", dict(sliding_window=None), dict(rope_theta=1e6)),
    "qwen2": ("Qwen2Config", dict(rms_norm_eps=1e-6, use_sliding_window=False), dict(rope_theta=1e6)),
    "qwen2-tied": ("Qwen2Config", dict(rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False),
                   dict(rope_theta=1e6)),
}
MOE_EXPORT = {"qwen2": "qwen2-moe", "qwen2-tied": "qwen2-moe"}  # the rest: mixtral
DENSE_EXPORT = {"mistral": "mistral", "qwen2": "qwen2", "qwen2-tied": "qwen2"}  # the rest: llama


def _rope(cls_name, rope):
    """transformers 5 takes rotary settings as rope_parameters (rope_theta inside)."""
    params = {"rope_type": "default", **(rope.get("rope_scaling") or {}), "rope_theta": rope["rope_theta"]}
    return {"rope_parameters": params}


def make_model(family: str, seed: int = 0):
    import transformers

    cls_name, kw, rope = FAMILIES[family]
    config_cls = getattr(transformers, cls_name)
    model_cls = getattr(transformers, cls_name.replace("Config", "ForCausalLM"))
    torch.manual_seed(seed)
    cfg = config_cls(**BASE, **kw, **_rope(cls_name, rope), bos_token_id=1, eos_token_id=2)
    model = model_cls(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.12)
    return model


def save(model, path: Path, spelling: str = "5.x") -> Path:
    """save_pretrained, then optionally rewrite the rotary settings as transformers 4.x (and the hub) spell them:
    rope_theta and rope_scaling at the top level, no rope_parameters."""
    model.save_pretrained(path)
    if spelling == "4.x":
        cfg = json.loads((path / "config.json").read_text())
        params = cfg.pop("rope_parameters")
        cfg["rope_theta"] = params.pop("rope_theta")
        cfg["rope_scaling"] = None if params.get("rope_type") == "default" else params
        (path / "config.json").write_text(json.dumps(cfg))
    return path
