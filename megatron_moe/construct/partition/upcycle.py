"""Upcycling: experts are copies of slices of the dense FFN (an extra to the LLaMA-MoE paper), and the
refinements published after it.

  upcycle_partition(F, E, g)                         Megatron-style: g contiguous slices, each replicated E/g
                                                     times; expert e holds slice e // (E/g); g=1 copies the FFN
  upcycle_partition(F, E, g, virtual_groups=True)    He et al. 2024 (arXiv 2410.07524): expert e holds shard
                                                     e mod g, so experts {k*g .. k*g+g-1} (virtual group k) hold
                                                     the g shards of copy k; their router rows are shared
  upcycle_scale(g, score_scale)                      weight scaling so the layer starts equal to the dense one
  drop_upcycle(w1, w3, w2, ratio, seed, dense)       Drop-Upcycling (arXiv 2502.19261): re-initialise a fraction
                                                     of each expert's neurons from the dense matrices' statistics

Legend: F dense FFN width, D hidden, E experts, g granularity (slices), F_e = F/g neurons per expert.
"""
from __future__ import annotations

import math

import torch

from .common import PartitionError, generator


def upcycle_partition(num_neurons: int, num_experts: int, granularity: int = 1,
                      virtual_groups: bool = False) -> torch.Tensor:
    """[E, F/g] with overlap (see the module docstring for the two arrangements)."""
    g = granularity
    if g < 1 or num_experts % g:
        raise PartitionError(f"granularity={g} must be >= 1 and divide num_experts={num_experts}")
    if num_neurons % g:
        raise PartitionError(f"FFN size {num_neurons} is not divisible by granularity={g}")
    slices_gF = torch.arange(num_neurons).view(g, num_neurons // g)
    if virtual_groups:
        return slices_gF.repeat(num_experts // g, 1)           # expert e -> shard e mod g
    return slices_gF.repeat_interleave(num_experts // g, dim=0)  # expert e -> slice e // (E/g)


def upcycle_scale(granularity: int, score_scale: float) -> float:
    """The factor a the experts' output must be multiplied by for the upcycled layer to start equal to the dense
    FFN, for virtual groups under a router that renormalises the top-k weights (softmax_topk, noisy_topk,
    sigmoid): equal logits inside a group give each selected expert weight s/K, and K selected experts are
    K/g whole copies, so the layer computes (s/K)(K/g) FFN = (s/g) FFN, and a = g / s.
    (He et al. state a = g for top-k-then-softmax without a score scale, s = 1: the same rule; and
    a = E*g/K for softmax-then-top-k without renormalisation, a router we do not have.)"""
    return granularity / score_scale


def scale_swiglu(w1_EFD: torch.Tensor, w3_EFD: torch.Tensor, w2_EDF: torch.Tensor,
                 a: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multiply the experts' SwiGLU output by a exactly: w3 and w2 by sqrt(a), w1 unchanged.
    (The a^(1/3)-on-all-three-matrices rule is exact only for a positively homogeneous gate such as ReLU:
    silu(c z) != c silu(z), so scaling w1 would change the function; tests/construct/test_upcycling.py shows it.)"""
    r = math.sqrt(a)
    return w1_EFD, w3_EFD * r, w2_EDF * r


def drop_upcycle(w1_EFD: torch.Tensor, w3_EFD: torch.Tensor, w2_EDF: torch.Tensor, ratio: float, seed: int,
                 dense: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor, torch.Tensor]:
    """Re-initialise round(ratio * F_e) neurons of every expert (the same index set in its w1/w3 rows and w2
    columns; a different seeded set per expert) from normals with the mean and std of the dense w1, w3, w2.
    Returns the new (w1, w3, w2) and the dropped indices [E, n]. ratio = 0 is plain upcycling."""
    if not 0 <= ratio <= 1:
        raise PartitionError(f"drop ratio {ratio} must be in [0, 1]")
    E, F_e, _ = w1_EFD.shape
    n = round(ratio * F_e)
    g = generator(seed)
    w1_EFD, w3_EFD, w2_EDF = w1_EFD.clone(), w3_EFD.clone(), w2_EDF.clone()
    stats = [(float(w.float().mean()), float(w.float().std())) for w in dense]
    dropped_En = torch.stack([torch.randperm(F_e, generator=g)[:n].sort().values for _ in range(E)])
    for e in range(E):
        idx = dropped_En[e]
        for w, (mu, sd), rows in ((w1_EFD, stats[0], True), (w3_EFD, stats[1], True), (w2_EDF, stats[2], False)):
            shape = (n, w.shape[2]) if rows else (w.shape[1], n)
            fresh = (torch.randn(shape, generator=g) * sd + mu).to(w.dtype)
            if rows:
                w[e, idx] = fresh
            else:
                w[e][:, idx] = fresh
    return w1_EFD, w3_EFD, w2_EDF, dropped_En


def shared_router_rows(num_experts: int, granularity: int, hidden: int, gen: torch.Generator,
                       std: float) -> torch.Tensor:
    """[E, D] router rows, one N(0, std) row per virtual group of g experts, repeated g times."""
    rows_GD = torch.randn(num_experts // granularity, hidden, generator=gen) * std
    return rows_GD.repeat_interleave(granularity, dim=0)
