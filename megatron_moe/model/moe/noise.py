"""Router noise that is the same for the same global sample in every parallel layout and micro-batch split.

The noise of a sample depends only on (key, layer, g): `key` names the optimizer step and g is the sample's
position in the step's global batch. The trainer sets a `NoiseContext(key=step_key(seed, step),
first_sample=...)` on every MoE layer before each micro-batch (training/moe_hooks.py), where first_sample is the
global position of the micro-batch's first sequence; so 1 process with 4 micro-batches of 1 and 2 DP ranks with
one micro-batch of 2 draw the same noise for the same sample. Activation recomputation replays the same context.

Without a context (a bare forward outside the trainer), the key is one draw from the global torch CPU RNG
(`noise_key`, identical on every rank when ranks are seeded alike and replayed by torch.utils.checkpoint) and the
rows are numbered dp_rank * B + b.

Each sample's noise is drawn for the full sequence [S, N] from a generator seeded by (key, layer, g); ranks then
keep their own tokens exactly as they do for the activations (the local chunk under sequence parallelism).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK = 2**63 - 1


@dataclass(frozen=True)
class NoiseContext:
    key: int
    """Names the optimizer step (`step_key`)."""
    first_sample: int
    """Global position, in the step's global batch, of the micro-batch's first sequence."""


def step_key(seed: int, step: int) -> int:
    """The noise key of optimizer step `step` (0-based) of a run seeded with `seed`."""
    return (seed * 6_364_136_223_846_793_005 + (step + 1) * 1_442_695_040_888_963_407) & _MASK


def noise_key() -> int:
    """One draw from the global CPU RNG (replayed by activation recomputation)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def row_noise(key: int, layer_idx: int, row: int, S: int, N: int, kind: str, device: torch.device) -> torch.Tensor:
    """[S, N] fp32 noise of global sample `row`: standard normal ("normal") or U[0, 1) ("uniform")."""
    g = torch.Generator(device=device)
    g.manual_seed((key * 1_000_003 + layer_idx * 7_919 + row * 104_729) & _MASK)
    if kind == "normal":
        return torch.randn(S, N, generator=g, device=device, dtype=torch.float32)
    return torch.rand(S, N, generator=g, device=device, dtype=torch.float32)


def batch_noise(key: int, layer_idx: int, first_row: int, B: int, S: int, N: int, kind: str,
                device: torch.device) -> torch.Tensor:
    """[B, S, N] noise for the B consecutive global samples starting at `first_row` (full sequence)."""
    return torch.stack([row_noise(key, layer_idx, first_row + b, S, N, kind, device) for b in range(B)])
