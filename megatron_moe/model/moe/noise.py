"""Router noise that is the same for the same global token in every parallel layout.

A training forward of a noisy router draws one int64 *key* from the global torch CPU RNG (`noise_key`). Every
rank seeds its torch RNG identically (`parallel.seed_all(seed)`), and activation recomputation
(torch.utils.checkpoint) restores the RNG state, so the replayed forward draws the same key. The noise of global
sample row g (= dp_rank * B + b, B the per-rank micro-batch) is drawn from a generator seeded by
(key, layer, g) for the full sequence [S, N]; ranks then keep their own tokens exactly as they do for the
activations (the local sequence chunk under sequence parallelism).
"""
from __future__ import annotations

import torch

_MASK = 2**63 - 1


def noise_key() -> int:
    """One draw from the global CPU RNG (replayed by activation recomputation)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def row_noise(key: int, layer_idx: int, row: int, S: int, N: int, kind: str, device: torch.device) -> torch.Tensor:
    """[S, N] fp32 noise of global sample row `row`: standard normal ("normal") or U[0, 1) ("uniform")."""
    g = torch.Generator(device=device)
    g.manual_seed((key * 1_000_003 + layer_idx * 7_919 + row * 104_729) & _MASK)
    if kind == "normal":
        return torch.randn(S, N, generator=g, device=device, dtype=torch.float32)
    return torch.rand(S, N, generator=g, device=device, dtype=torch.float32)


def batch_noise(key: int, layer_idx: int, dp_rank: int, B: int, S: int, N: int, kind: str,
                device: torch.device) -> torch.Tensor:
    """[B, S, N] noise for this data-parallel rank's B sample rows (full sequence)."""
    return torch.stack([row_noise(key, layer_idx, dp_rank * B + b, S, N, kind, device) for b in range(B)])
