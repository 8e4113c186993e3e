"""Tiny MoE checkpoints for the export tests."""
import torch

from megatron_moe.checkpoint import CheckpointWriter, config_dict, part_of
from megatron_moe.config import Config, ModelConfig, MoEConfig
from megatron_moe.model import build_model, init_weights

TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=96,
            max_seq_len=32)


def save_state(state: dict, model_cfg, moe_cfg, path, extra_json=None):
    parts = {}
    for n, t in state.items():
        parts.setdefault(part_of(n), {})[n] = t.detach().clone()
    with CheckpointWriter(path, config_dict(model_cfg, moe_cfg)) as w:
        for p, ts in parts.items():
            w.add_part(p, ts)
        for name, obj in (extra_json or {}).items():
            w.write_json(name, obj)
    return path


def make_moe(path, seed=0, router_std=0.3, model_kw=None, **moe_kw):
    """An MoE checkpoint with random weights, including non-zero routers and noise weights."""
    model_cfg = ModelConfig(**{**TINY, **(model_kw or {})})
    moe_cfg = MoEConfig(**{"num_experts": 4, "top_k": 2, "use_kernels": "off", **moe_kw})
    model = build_model(Config(model=model_cfg, moe=moe_cfg))
    init_weights(model, seed=seed, std=0.1)
    g = torch.Generator().manual_seed(seed + 100)
    state = model.state_dict()
    for n, t in state.items():
        if ".router." in n and t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=g) * router_std)
    save_state(state, model_cfg, moe_cfg, path)
    return model_cfg, moe_cfg


def ids(batch=2, seq=12, vocab=96, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
