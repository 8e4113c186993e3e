"""Layout-independent initialisation: every parameter is cut from a canonical global tensor drawn from a
generator seeded by (seed, parameter name), so 1 process and TP×EP×DP processes start from the same function."""
from __future__ import annotations

import zlib

import torch
from torch import nn

from .sharding import sharding_table

ZERO_INIT = ("router.gate.weight", "router.noise.weight", "router.expert_bias")


def _generator(seed: int, name: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return g


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Norms to 1, biases and LLaMA-MoE routers (linear gate, noise) to 0, everything else N(0, std) (output projections
    scaled by 1/sqrt(2·layers) as in GPT-2/Megatron)."""
    num_layers = getattr(getattr(model, "cfg", None), "num_layers", 1)
    table = sharding_table(model)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
            continue
        if name.endswith(ZERO_INIT) or name.endswith(".bias"):
            p.zero_()
            continue
        s = std / (2 * num_layers) ** 0.5 if name.endswith(("wo.weight", "w2.weight", "experts.w2")) else std
        spec = table[name]
        full = torch.empty(spec.global_shape(p.shape), dtype=torch.float32).normal_(0.0, s,
                                                                                    generator=_generator(seed, name))
        p.copy_(spec.local_slice(full))
    for name, b in model.named_buffers():
        if name.endswith("expert_bias"):
            b.zero_()
