"""Gradient synchronisation, global gradient norm and clipping, driven by the parameters' sharding metadata.

Sync (after the last micro-batch's backward):
  1. sequence-parallel parameters (`param.sequence_parallel`: norms, routers under SP) hold partial gradients per
     TP rank: all-reduce (sum) over the TP group;
  2. dense parameters: all-reduce (sum) over the data-parallel group; expert parameters (`param.is_expert`):
     all-reduce (sum) over the expert-data-parallel group (the ranks holding the same expert shard), whenever it
     has more than one rank, also at dp = 1: under TP every TP rank sends different tokens to the experts;
  3. both are scaled by 1/dp: every rank's loss is the mean over its own tokens, so the sum over dp ranks'
     gradients divided by dp is the gradient of the global mean loss (expert shards already received the
     gradients of all ep ranks' tokens through the all-to-all, so their EDP sum covers all dp ranks too).
Gradients are bucketed by dtype into flat buffers, one all-reduce per bucket.

Global norm: every distinct gradient element counted once. A rank counts a dense parameter if it is
dp_rank 0 and the parameter is TP-split or this is tp_rank 0; an expert parameter if it is edp_rank 0.
The partial squared sums are all-reduced over the whole world, so every rank gets the same norm.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..parallel import ParallelState, all_reduce_, world_group

BUCKET_ELEMS = 2 ** 25


def _params_with_grad(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad and p.grad is not None]


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


@torch.no_grad()
def sync_grads(model: nn.Module, ps: ParallelState) -> None:
    """All-reduce gradients as described in the module docstring (no-op in a world of one)."""
    params = _params_with_grad(model)
    if ps.sp and ps.tp_size > 1:
        sp = [p.grad for p in params if getattr(p, "sequence_parallel", False)]
        if sp:
            _all_reduce_flat(sp, ps.tp_group, 1.0)
    dense = [p.grad for p in params if not getattr(p, "is_expert", False)]
    expert = [p.grad for p in params if getattr(p, "is_expert", False)]
    if ps.dp_size > 1 and dense:
        _all_reduce_flat(dense, ps.dp_group, 1.0 / ps.dp_size)
    if expert and ps.edp_size > 1:  # also with dp = 1: TP ranks route different tokens to their expert replicas
        _all_reduce_flat(expert, ps.edp_group, 1.0 / ps.dp_size)
    elif expert and ps.dp_size > 1:
        torch._foreach_mul_(expert, 1.0 / ps.dp_size)


def _counted(p: torch.Tensor, ps: ParallelState) -> bool:
    if getattr(p, "is_expert", False):
        return ps.edp_rank == 0
    if ps.dp_rank != 0:
        return False
    return ps.tp_rank == 0 or any(s.size > 1 for s in getattr(p, "splits", ()))


@torch.no_grad()
def global_grad_norm(model: nn.Module, ps: ParallelState) -> float:
    """L2 norm of the full (unsharded, deduplicated) gradient; inf/nan propagate."""
    params = _params_with_grad(model)
    mine = [p.grad for p in params if _counted(p, ps)]
    device = params[0].device if params else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    if mine:
        norms = torch._foreach_norm([g.float() for g in mine])
        total = total + torch.stack(norms).double().pow(2).sum()
    if ps.world_size > 1:
        all_reduce_(total, world_group())
    return float(total.sqrt())


@torch.no_grad()
def clip_grads(model: nn.Module, max_norm: float, norm: float) -> float:
    """Scale gradients so their global norm is at most `max_norm` (0 disables); returns the scale used."""
    if max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return 1.0
    scale = max_norm / (norm + 1e-6)
    grads = [p.grad for p in _params_with_grad(model)]
    if grads:
        torch._foreach_mul_(grads, scale)
    return scale


def zero_missing_grads(params: Iterable[torch.Tensor]) -> None:
    """Give parameters that got no gradient (e.g. an expert no token reached) a zero one, so collectives match."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
