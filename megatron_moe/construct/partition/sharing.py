"""Gradient-importance methods with neuron sharing (LLaMA-MoE).

- sharing-inner: expert c takes its top-F_e neurons by importance v^c; experts may overlap and some
  neurons stay unused (not lossless by design).
- sharing-inter (residual): the neurons that appear in the most clusters' top-F_e lists become the
  always-on shared experts (Fs neurons); the remaining neurons are split among the routed experts by
  greedy balanced assignment. Routed + shared cover every neuron exactly once (lossless).

Legend: C calibration clusters (= routed experts E), F neurons, F_e neurons per routed expert,
Fs shared neurons.
"""
from __future__ import annotations

import torch

from .common import PartitionError, greedy_balanced_assignment


def sharing_inner_partition(importance_CF: torch.Tensor, expert_size: int) -> torch.Tensor:
    """[E, F_e]: row c holds the top-F_e neurons of cluster c (ascending indices; overlap allowed)."""
    C, F = importance_CF.shape
    if not 1 <= expert_size <= F:
        raise PartitionError(f"expert size {expert_size} must be between 1 and the FFN size {F}")
    # stable tie-break by neuron index: sort descending by score with a stable sort
    order = torch.argsort(-importance_CF.detach().double().cpu(), dim=1, stable=True)
    return torch.sort(order[:, :expert_size], dim=1).values


def sharing_inter_partition(importance_CF: torch.Tensor, expert_size: int,
                            shared_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(routed [E, F_e], shared [Fs]) with E * F_e + Fs == F, each neuron exactly once.

    Shared neurons: the Fs neurons selected by the most clusters' top-F_e lists (ties broken by total
    importance, then by index)."""
    C, F = importance_CF.shape
    if C * expert_size + shared_size != F:
        raise PartitionError(f"{C} routed experts x {expert_size} + {shared_size} shared neurons != FFN size {F}")
    imp = importance_CF.detach().double().cpu()
    top_EF = sharing_inner_partition(imp, expert_size)
    votes_F = torch.bincount(top_EF.reshape(-1), minlength=F).double()
    total_F = imp.sum(0)
    # rank by votes, then total importance (normalised below one vote), then index (stable sort)
    key = votes_F + total_F / (total_F.max() * 2 + 1e-30)
    shared = torch.sort(torch.argsort(-key, stable=True)[:shared_size]).values
    rest = torch.ones(F, dtype=torch.bool)
    rest[shared] = False
    rest_idx = rest.nonzero().squeeze(1)
    routed_local = greedy_balanced_assignment(imp[:, rest_idx], expert_size)
    return rest_idx[routed_local], shared
