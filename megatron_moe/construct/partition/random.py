"""Independent-Random: the paper's final choice. A seeded balanced shuffle of F neurons into E experts."""
from __future__ import annotations

import torch

from .common import check_divisible, generator, labels_to_assignment


def random_partition(num_neurons: int, num_experts: int, seed: int = 1227) -> torch.Tensor:
    """Shuffle the labels [0..E-1] * (F/E) with a seeded generator; returns the assignment [E, F/E]."""
    F_e = check_divisible(num_neurons, num_experts)
    labels_F = torch.arange(num_experts).repeat_interleave(F_e)
    labels_F = labels_F[torch.randperm(num_neurons, generator=generator(seed))]
    return labels_to_assignment(labels_F, num_experts)
