"""Gradient synchronisation, global gradient norm and clipping, driven by the model's sharding table
(model/sharding.py).

Sync (after the last micro-batch's backward):
  1. sequence-parallel tensors (`sequence_parallel`: norms, routers under SP) hold partial gradients per TP rank:
     all-reduce (sum) over the TP group;
  2. dense parameters: all-reduce (sum) over the data-parallel group; expert parameters (`is_expert`): all-reduce
     (sum) over the expert-data-parallel group (the ranks holding the same expert shard), whenever it has more
     than one rank, also at dp = 1: under TP every TP rank sends different tokens to the experts;
  3. both are scaled by 1/dp: every rank's loss is the mean over its own tokens, so the sum over dp ranks'
     gradients divided by dp is the gradient of the global mean loss (expert shards already received the
     gradients of all ep ranks' tokens through the all-to-all, so their EDP sum covers all dp ranks too).
Gradients are bucketed by dtype into flat buffers, one all-reduce per bucket.
Under FSDP2 (`sharded=True`, train.sharding zero2/fsdp) steps 2-3 happen in backward (reduce-scatter over dp with
mean, over edp with sum / dp: parallel/fsdp.py) and each rank holds its shard of the result; step 1 then sums
those shards over TP (the same shard of the same tensor on every TP rank; the sum commutes with the mean).

Global norm: every distinct gradient element counted once, partial squared sums all-reduced over the whole world
so every rank gets the same norm. Replicated gradients: a rank counts a dense parameter if it is dp_rank 0 and
the parameter is TP-split or this is tp_rank 0; an expert parameter if it is edp_rank 0. Sharded (FSDP2): every
rank counts its own shards, dense ones unless replicated over TP and tp_rank > 0.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..memory_plan import GRAD_BUCKET_ELEMS as BUCKET_ELEMS  # the planner counts one bucket
from ..model.sharding import ParamSharding, sharding_table
from ..parallel import ParallelState, all_reduce_, world_group


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _with_grad(model: nn.Module) -> list[tuple[ParamSharding, torch.Tensor]]:
    """(sharding, local gradient) of every parameter that has a gradient."""
    table = sharding_table(model)
    return [(table[n], _local(p.grad)) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]


def _all_reduce_flat(grads: list[torch.Tensor], group, scale: float) -> None:
    """Sum `grads` over `group` in flat buckets, then multiply by `scale` (in place)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for g in grads:
        if not buckets or size + g.numel() > BUCKET_ELEMS or buckets[-1][0].dtype != g.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += g.numel()
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        all_reduce_(flat, group)
        if scale != 1.0:
            flat.mul_(scale)
        off = 0
        for g in bucket:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()
        del flat  # before the next bucket's cat: one flat buffer at a time (memory_plan counts one)


@torch.no_grad()
def sync_grads(model: nn.Module, ps: ParallelState, sharded: bool = False) -> None:
    """Synchronise gradients as described in the module docstring (no-op in a world of one)."""
    grads = _with_grad(model)
    if ps.sp and ps.tp_size > 1:
        sp = [g for spec, g in grads if spec.sequence_parallel and g.numel()]
        if sp:
            _all_reduce_flat(sp, ps.tp_group, 1.0)
    if sharded:
        return
    dense = [g for spec, g in grads if not spec.is_expert]
    expert = [g for spec, g in grads if spec.is_expert]
    if ps.dp_size > 1 and dense:
        _all_reduce_flat(dense, ps.dp_group, 1.0 / ps.dp_size)
    if expert and ps.edp_size > 1:  # also with dp = 1: TP ranks route different tokens to their expert replicas
        _all_reduce_flat(expert, ps.edp_group, 1.0 / ps.dp_size)
    elif expert and ps.dp_size > 1:
        torch._foreach_mul_(expert, 1.0 / ps.dp_size)


def _counted(spec: ParamSharding, ps: ParallelState, sharded: bool) -> bool:
    if sharded:
        return spec.is_expert or spec.tp_split or ps.tp_rank == 0
    if spec.is_expert:
        return ps.edp_rank == 0
    if ps.dp_rank != 0:
        return False
    return ps.tp_rank == 0 or spec.tp_split


@torch.no_grad()
def global_grad_norm(model: nn.Module, ps: ParallelState, sharded: bool = False) -> float:
    """L2 norm of the full (unsharded, deduplicated) gradient; inf/nan propagate."""
    mine = [g for spec, g in _with_grad(model) if _counted(spec, ps, sharded) and g.numel()]
    device = mine[0].device if mine else ps.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    if mine:
        norms = torch._foreach_norm([g.float() for g in mine])
        total = total + torch.stack(norms).double().pow(2).sum()
    if ps.world_size > 1:
        total = all_reduce_(total.to(ps.device), world_group())
    return float(total.sqrt())


@torch.no_grad()
def clip_grads(model: nn.Module, max_norm: float, norm: float) -> float:
    """Scale gradients so their global norm is at most `max_norm` (0 disables); returns the scale used."""
    if max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return 1.0
    scale = max_norm / (norm + 1e-6)
    grads = [g for _, g in _with_grad(model)]
    if grads:
        torch._foreach_mul_(grads, scale)
    return scale


def zero_missing_grads(params: Iterable[torch.Tensor]) -> None:
    """Give parameters that got no gradient (e.g. an expert no token reached) a zero one, so collectives match."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
