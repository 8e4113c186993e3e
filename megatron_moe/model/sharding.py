"""Sharding metadata: one table, keyed by canonical tensor name, of how each rank's local tensor relates to the
canonical global tensor (docs/checkpoint_format.md). Initialisation, checkpointing, gradient sync, the gradient
norm and the optimizer read only this table.

    declare(module, "weight", Split("tp", 0, ps.tp_size, ps.tp_rank))      # where the module creates it
    table = sharding_table(model)             # {full name: ParamSharding}, for every parameter and buffer
    spec = table["layers.0.attn.wq.weight"]   # .splits, .is_expert, .sequence_parallel
    spec.global_shape(local.shape); spec.local_slice(full)

Modules declare their tensors' model-parallel cuts when they create them; `sharding_table` collects the
declarations under full names (undeclared tensors are replicated dense tensors). The table lives beside the
parameters, not on them, so it survives wrappers that replace Parameter objects: FSDP2 (`train.sharding` zero2 /
fsdp, parallel/fsdp.py) turns each parameter into a DTensor sharded over the data-parallel ranks, and that last
cut is read from the DTensor's own placement (checkpoint/sharded.py composes both).

Splits (model parallelism) are listed outermost first; each names its rank axis (ranks counted within a pipeline
stage, parallel/state.py):
  tp   dense tensors split over the tensor-parallel group (rank = tp_rank + tp * dp_rank)
  ep   routed experts split over the expert-parallel group (rank = etp_rank + etp * (ep_rank + ep * edp_rank))
  etp  each expert's FFN width split over the expert-tensor-parallel group
A dense tensor is replicated over the data-parallel group (dp), an expert tensor (`is_expert`) over the
expert-data-parallel group (edp). Pipeline stages hold different tensors (different layers), not cuts of one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

AXES = ("tp", "ep", "etp")


@dataclass(frozen=True)
class Split:
    """One cut of a tensor dimension: `dim` in `size` equal chunks over rank axis `axis`; this rank holds `rank`."""

    axis: str
    dim: int
    size: int
    rank: int

    def __post_init__(self):
        if self.axis not in AXES:
            raise ValueError(f"unknown rank axis {self.axis!r} (one of {', '.join(AXES)})")


@dataclass(frozen=True)
class ParamSharding:
    """How one local tensor is cut from its global tensor."""

    splits: tuple = ()
    """Model-parallel Splits, outermost first (size-1 splits are dropped)."""
    is_expert: bool = False
    """A routed-expert tensor: replicated over the expert-data-parallel group instead of the data-parallel one."""
    sequence_parallel: bool = False
    """Replicated over TP, but under sequence parallelism each TP rank sees different tokens, so its gradient is
    partial per TP rank and is summed over the TP group (norms, routers, a row-parallel bias)."""

    @property
    def tp_split(self) -> bool:
        return any(s.axis == "tp" for s in self.splits)

    def global_shape(self, local_shape: Iterable[int]) -> tuple:
        shape = list(local_shape)
        for s in self.splits:
            shape[s.dim] *= s.size
        return tuple(shape)

    def offsets(self, local_shape: Iterable[int]) -> tuple:
        """Offset of the local tensor inside the global one, per dim."""
        local_shape = tuple(local_shape)
        off = [0] * len(local_shape)
        for s in self.splits:
            off[s.dim] += s.rank * local_shape[s.dim]
        return tuple(off)

    def local_slice(self, full: torch.Tensor) -> torch.Tensor:
        return local_slice(full, self.splits)


REPLICATED = ParamSharding()


def local_slice(full: torch.Tensor, splits: Iterable[Split]) -> torch.Tensor:
    """Cut the global tensor `full` down to this rank's piece (a view)."""
    out = full
    for s in splits:
        if out.shape[s.dim] % s.size:
            raise ValueError(f"dim {s.dim} of size {out.shape[s.dim]} is not divisible into {s.size} shards")
        out = out.chunk(s.size, dim=s.dim)[s.rank]
    return out


_DECLARED = "_param_sharding"


def declare(module: nn.Module, name: str, *splits: Split, is_expert: bool = False,
            sequence_parallel: bool = False) -> None:
    """Record the sharding of `module`'s tensor `name` (a dotted path below the module, e.g. "gate.0.weight")."""
    table = module.__dict__.setdefault(_DECLARED, {})
    table[name] = ParamSharding(tuple(s for s in splits if s.size > 1), is_expert, sequence_parallel)


class ShardingTable(Mapping):
    """{full tensor name: ParamSharding} for every parameter and buffer of a model."""

    def __init__(self, entries: dict):
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> ParamSharding:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a tensor of this model (no sharding entry)") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def expert_names(self) -> list[str]:
        return [n for n, s in self._entries.items() if s.is_expert]


def sharding_table(model: nn.Module) -> ShardingTable:
    """The table of `model` (built once from the modules' declarations and kept on the model)."""
    cached = model.__dict__.get("_sharding_table")
    if cached is not None:
        return cached
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    entries = {n: REPLICATED for n in names}
    for prefix, module in model.named_modules():
        for rel, spec in module.__dict__.get(_DECLARED, {}).items():
            full = f"{prefix}.{rel}" if prefix else rel
            if full not in entries:
                raise KeyError(f"sharding declared for {full!r}, which is not a tensor of the model")
            entries[full] = spec
    table = ShardingTable(entries)
    model.__dict__["_sharding_table"] = table
    return table


def check_complete(table: Mapping[str, ParamSharding], names: Iterable[str]) -> None:
    """Every name has an entry (a wrapper that renamed parameters would otherwise lose their metadata)."""
    missing = [n for n in names if n not in table]
    if missing:
        raise KeyError(f"no sharding entry for {missing[0]!r} ({len(missing)} tensors); was the model renamed by a "
                       f"wrapper?")


__all__ = ["AXES", "REPLICATED", "ParamSharding", "ShardingTable", "Split", "check_complete", "declare",
           "local_slice", "sharding_table"]
