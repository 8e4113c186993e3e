"""How a local parameter relates to its canonical global tensor (docs/checkpoint_format.md).

Every parameter carries `param.splits`: a tuple of `Split(dim, size, rank)`, applied in order, that cut the
global tensor down to the local one, and `param.is_expert` (replicated over the expert-data-parallel group
instead of the data-parallel group). Checkpointing, initialisation and gradient sync read only these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class Split:
    dim: int
    size: int
    rank: int


def mark(param: torch.Tensor, *splits: Split, is_expert: bool = False, sequence_parallel: bool = False) -> None:
    """Attach sharding metadata. Splits of size 1 are dropped. `sequence_parallel` marks replicated parameters
    whose gradients are partial per TP rank under sequence parallelism (norms, routers) and need a TP all-reduce."""
    param.splits = tuple(s for s in splits if s.size > 1)
    param.is_expert = is_expert
    param.sequence_parallel = sequence_parallel


def splits_of(param: torch.Tensor) -> tuple:
    return getattr(param, "splits", ())


def global_shape(param: torch.Tensor) -> tuple:
    shape = list(param.shape)
    for s in splits_of(param):
        shape[s.dim] *= s.size
    return tuple(shape)


def offsets(param: torch.Tensor) -> tuple:
    """Offset of the local tensor inside the global one, per dim."""
    off = [0] * param.dim()
    for s in splits_of(param):
        off[s.dim] += s.rank * param.shape[s.dim]
    return tuple(off)


def local_slice(full: torch.Tensor, splits: Iterable[Split]) -> torch.Tensor:
    """Cut the global tensor `full` down to this rank's piece (a view)."""
    out = full
    for s in splits:
        if out.shape[s.dim] % s.size:
            raise ValueError(f"dim {s.dim} of size {out.shape[s.dim]} is not divisible into {s.size} shards")
        out = out.chunk(s.size, dim=s.dim)[s.rank]
    return out
