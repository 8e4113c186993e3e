"""Parallel layouts the memory planner plans and searches (memory_plan.py, memory_search.py): one `Layout` per
choice of tp / ep / etp / sp / pp / sharding / recompute / micro batch for a number of GPUs, and its round trip
to a Config (`layout_from_config`, `apply_layout`, `check_layout`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

from .config import Config, ConfigError, ParallelConfig
from .errors import UserError


class MemoryPlanError(UserError, ValueError):
    """The config or layout cannot be planned (one line naming the numbers)."""


@dataclass(frozen=True)
class Layout:
    """One parallel layout and batch choice for `world_size` GPUs."""

    world_size: int
    tp: int = 1
    ep: int = 1
    etp: int = 1
    sp: bool = False
    sharding: str = "none"
    """train.sharding: none, zero1, zero2 or fsdp."""
    offload: bool = False
    """train.offload_optimizer (zero2 / fsdp only)."""
    recompute: bool = False
    micro_batch: int = 1
    pp: int = 1
    """Pipeline stages (parallel.pp)."""
    pp_layout: Optional[tuple] = None
    """Decoder layers per stage (parallel.pp_layout); None: the even split."""
    pp_flush: int = 0
    """Micro-batches per pipeline flush (parallel.pp_flush); 0: all of a step's."""

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def edp(self) -> int:
        return self.world_size // (self.ep * self.etp * self.pp)

    def parallel(self) -> ParallelConfig:
        """The parallel: section of this layout (stage_layers / stage_range live there)."""
        return ParallelConfig(tp=self.tp, ep=self.ep, etp=self.etp if self.etp > 1 else None, sp=self.sp,
                              pp=self.pp, pp_layout=list(self.pp_layout) if self.pp_layout else None,
                              pp_flush=self.pp_flush)

    def describe(self) -> str:
        stages = f" pp_layout={','.join(map(str, self.pp_layout))}" if self.pp_layout else ""
        stages += f" pp_flush={self.pp_flush}" if self.pp_flush else ""
        return (f"tp={self.tp} ep={self.ep} etp={self.etp} sp={self.sp} pp={self.pp}{stages} dp={self.dp} "
                f"edp={self.edp} sharding={self.sharding}{' offload' if self.offload else ''} "
                f"recompute={self.recompute} micro_batch={self.micro_batch}")

    def overrides(self) -> str:
        """The config overrides that select this layout (a pp_layout list is shell-quoted)."""
        stages = f"'parallel.pp_layout=[{','.join(map(str, self.pp_layout))}]'" if self.pp_layout else \
            "parallel.pp_layout=null"
        return (f"parallel.tp={self.tp} parallel.ep={self.ep} parallel.sp={str(self.sp).lower()} "
                f"train.sharding={self.sharding} train.offload_optimizer={str(self.offload).lower()} "
                f"train.recompute={str(self.recompute).lower()} train.micro_batch_size={self.micro_batch}"
                + (f" parallel.etp={self.etp}" if self.etp > 1 else "") + f" parallel.pp={self.pp} {stages}"
                + f" parallel.pp_flush={self.pp_flush}")


def layout_from_config(cfg: Config, world_size: int) -> Layout:
    p, tr = cfg.parallel, cfg.train
    return Layout(world_size=world_size, tp=p.tp, ep=p.ep, etp=p.expert_tp, sp=p.sp, sharding=tr.sharding,
                  offload=tr.offload_optimizer, recompute=tr.recompute, micro_batch=tr.micro_batch_size, pp=p.pp,
                  pp_layout=tuple(p.pp_layout) if p.pp_layout is not None else None, pp_flush=p.pp_flush)


def apply_layout(cfg: Config, layout: Layout) -> Config:
    """A copy of `cfg` with the layout's parallel and batch settings."""
    out = copy.copy(cfg)  # only the parallel and train sections change: copy those (the search calls this a lot)
    out.parallel, out.train = copy.copy(cfg.parallel), copy.copy(cfg.train)
    out.parallel.tp, out.parallel.ep, out.parallel.sp = layout.tp, layout.ep, layout.sp
    out.parallel.etp = layout.etp if layout.etp > 1 else None
    out.parallel.pp = layout.pp
    out.parallel.pp_layout = list(layout.pp_layout) if layout.pp_layout is not None else None
    out.parallel.pp_flush = layout.pp_flush
    out.train.sharding, out.train.offload_optimizer = layout.sharding, layout.offload
    out.train.recompute, out.train.micro_batch_size = layout.recompute, layout.micro_batch
    return out


def check_layout(cfg: Config, layout: Layout) -> None:
    """MemoryPlanError unless `layout` is a valid one for `cfg` (Config.validate, which also checks that the 1F1B
    schedule gets at least pp micro-batches)."""
    try:
        apply_layout(cfg, layout).validate(layout.world_size)
    except ConfigError as err:
        raise MemoryPlanError(f"layout {layout.describe()} is invalid: {err}") from None
