"""Upcycling (Megatron-style, an extra to the paper): split the FFN into g contiguous slices and
replicate each slice E/g times; g=1 copies the whole FFN into every expert.

Expert e holds slice e // (E/g). With every expert selected at weight 1 the layer computes (E/g) x the
dense FFN, so the lossless check weights each expert g/E.
"""
from __future__ import annotations

import torch

from .common import PartitionError


def upcycle_partition(num_neurons: int, num_experts: int, granularity: int = 1) -> torch.Tensor:
    """[E, F/g] with overlap: expert e owns neurons of slice e // (E/g)."""
    g = granularity
    if g < 1 or num_experts % g:
        raise PartitionError(f"granularity={g} must be >= 1 and divide num_experts={num_experts}")
    if num_neurons % g:
        raise PartitionError(f"FFN size {num_neurons} is not divisible by granularity={g}")
    slices_gF = torch.arange(num_neurons).view(g, num_neurons // g)
    return slices_gF.repeat_interleave(num_experts // g, dim=0)
