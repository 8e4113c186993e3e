"""Device-agnostic autograd collectives (gloo on CPU, nccl on GPU).

megatron-core's sequence-parallel mappings and all-to-all allocate on the current CUDA device, so they
fail on CPU; these use the input tensor's device. Every function is the identity when `group` is None or has
one rank, so single-process code paths stay collective-free.

    all_to_all(x, out_splits, in_splits, group)   fwd: uneven all-to-all along dim 0; bwd: the reverse
    gather_seq(x, group, dim)                     fwd: all-gather along dim; bwd: reduce-scatter
    scatter_seq(x, group, dim)                    fwd: keep own chunk; bwd: all-gather
    reduce_scatter_seq(x, group, dim)             fwd: sum then keep own chunk; bwd: all-gather
    all_reduce_sum(x, group)                      fwd: all-reduce; bwd: identity
    copy_to_group(x, group)                       fwd: identity; bwd: all-reduce
Outside autograd: all_reduce_ (in place), broadcast_, barrier, all_gather_object, is_distributed, world_group.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

Group = Optional[dist.ProcessGroup]


def group_size(group: Group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group: Group) -> int:
    return 0 if group is None else dist.get_rank(group)


def _is_nccl(group: Group) -> bool:
    return dist.get_backend(group) == "nccl"


def _all_gather(x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    n = group_size(group)
    if _is_nccl(group):
        moved = x.movedim(dim, 0).contiguous()
        out = moved.new_empty((n * moved.shape[0],) + tuple(moved.shape[1:]))
        dist.all_gather_into_tensor(out, moved, group=group)
        return torch.cat([c.movedim(0, dim) for c in out.chunk(n, dim=0)], dim=dim) if dim else out
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def _reduce_scatter(x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    n, r = group_size(group), group_rank(group)
    if x.shape[dim] % n:
        raise ValueError(f"reduce-scatter: size {x.shape[dim]} along dim {dim} is not divisible by group size {n}")
    if _is_nccl(group) and dim == 0:
        out = torch.empty((x.shape[0] // n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        dist.reduce_scatter_tensor(out, x.contiguous(), group=group)
        return out
    # gloo has no reduce-scatter: all-reduce then keep our chunk (twice the traffic; CPU only).
    total = x.contiguous().clone()
    dist.all_reduce(total, group=group)
    return total.chunk(n, dim=dim)[r].contiguous()


def _own_chunk(x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
    n, r = group_size(group), group_rank(group)
    if x.shape[dim] % n:
        raise ValueError(f"scatter: size {x.shape[dim]} along dim {dim} is not divisible by group size {n}")
    return x.chunk(n, dim=dim)[r].contiguous()


class _GatherSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _all_gather(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.group, ctx.dim), None, None


class _ScatterSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _own_chunk(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group, ctx.dim), None, None


class _ReduceScatterSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _reduce_scatter(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group, ctx.dim), None, None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _a2a(x: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int], group: Group) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((int(sum(out_splits)),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x, output_split_sizes=list(out_splits), input_split_sizes=list(in_splits),
                           group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.group, ctx.out_splits, ctx.in_splits = group, out_splits, in_splits
        return _a2a(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad):
        return _a2a(grad, ctx.in_splits, ctx.out_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, out_splits: Sequence[int], in_splits: Sequence[int], group: Group) -> torch.Tensor:
    """Uneven all-to-all of rows: send in_splits[i] rows to rank i, receive out_splits[i] rows from rank i."""
    if group_size(group) == 1:
        return x
    if sum(in_splits) != x.shape[0]:
        raise ValueError(f"all_to_all: input has {x.shape[0]} rows but in_splits sum to {sum(in_splits)}")
    return _AllToAll.apply(x, [int(s) for s in out_splits], [int(s) for s in in_splits], group)


def gather_seq(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    return x if group_size(group) == 1 else _GatherSeq.apply(x, group, dim)


def scatter_seq(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    return x if group_size(group) == 1 else _ScatterSeq.apply(x, group, dim)


def reduce_scatter_seq(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    return x if group_size(group) == 1 else _ReduceScatterSeq.apply(x, group, dim)


def all_reduce_sum(x: torch.Tensor, group: Group) -> torch.Tensor:
    return x if group_size(group) == 1 else _AllReduceSum.apply(x, group)


def copy_to_group(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Identity forward; backward all-reduces the gradient (an input replicated over the group, consumed by a
    different shard of a weight on each rank)."""
    return x if group_size(group) == 1 else _CopyToGroup.apply(x, group)


def is_distributed() -> bool:
    """torch.distributed is up with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_group() -> Group:
    """The default group of a multi-rank job, None in a world of one."""
    return dist.group.WORLD if is_distributed() else None


def all_reduce_(x: torch.Tensor, group: Group, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) outside autograd; identity for None or a group of one. Returns x.
    `world_group()` reduces over every rank."""
    if group is None or group_size(group) == 1:
        return x
    dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)
    return x


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from global rank `src` to every rank (identity in a world of one)."""
    if is_distributed():
        dist.broadcast(x, src=src)
    return x


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj, group: Group) -> list:
    """Gather a picklable small object (counts, stats) from every rank of the group (no tensors of ours)."""
    if group_size(group) == 1:
        return [obj]
    out = [None] * group_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out
