"""Gradient-importance methods (LLaMA-MoE): importance v_i^c = sum_tokens |h_i * dL/dh_i| / #tokens of
calibration cluster c, where h is the down-projection input. This module turns importance [C, F]
(C = E clusters) into assignments; calibration.py computes the importance.

- independent: greedy balanced assignment, each neuron once, F/E per expert;
- sharing-inner / sharing-inter: see sharing.py.

Legend: C calibration clusters (= experts), F neurons, E experts.
"""
from __future__ import annotations

import torch

from .common import PartitionError, check_divisible, greedy_balanced_assignment


def importance_update(acc_CF: torch.Tensor, h_TF: torch.Tensor, dh_TF: torch.Tensor,
                      cluster_T: torch.Tensor) -> torch.Tensor:
    """acc[c] += sum over tokens t of cluster c of |h_t * dh_t| (in place); returns acc."""
    score_TF = (h_TF.detach() * dh_TF.detach()).abs().to(acc_CF.dtype)
    acc_CF.index_add_(0, cluster_T.to(acc_CF.device), score_TF)
    return acc_CF


def gradient_partition(importance_CF: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Independent gradient split: greedy balanced assignment over importance [E, F]; returns [E, F/E]."""
    C, F = importance_CF.shape
    if C != num_experts:
        raise PartitionError(f"importance has {C} clusters but num_experts={num_experts}")
    return greedy_balanced_assignment(importance_CF, check_divisible(F, num_experts))
