"""FSDP2 (`torch.distributed.fsdp.fully_shard`) over the data-parallel groups, composed with TP/SP/EP/ETP.

    shard_model(model, ps, "fsdp", bf16=True, offload=False)   # train.sharding zero2 | fsdp

Units (one all-gather and one reduce-scatter each), bottom-up as FSDP2 wants:
  1. each MoE layer's routed experts, over the expert-data-parallel group (edp: the ranks holding the same expert
     shard); their gradients are summed over edp and divided by dp, not edp (training/grads.py says why);
  2. each decoder layer (attention, norms, router, shared experts or dense MLP), over the data-parallel group (dp:
     the ranks holding the same TP shard), gradients averaged over dp;
  3. the root: embedding, final norm, LM head (kept gathered from forward to backward in both modes).
FSDP2 shards a tensor's dim 0 over the group (another dim when dim 0 has fewer rows than ranks, e.g. 2 local
experts over 8 edp ranks); what each rank holds of the global tensor is the model-parallel cut of the sharding
table followed by this data-parallel cut (checkpoint/sharded.py composes both for checkpoints).

Mixed precision as megatron-core and torchtitan do it: the sharded parameters are fp32 master weights, they are
all-gathered in bf16 for compute, and gradients are reduce-scattered in fp32. zero2 keeps the gathered weights
from forward to backward (`reshard_after_forward=False`); fsdp frees them after each unit's forward and gathers
again in backward. `offload` keeps the sharded parameters, gradients and AdamW state in host memory
(CPUOffloadPolicy; AdamW then steps on the CPU). Every gradient is reduce-scattered, also one a rank did not
produce (zeros), so collectives match when ranks route tokens differently.

The model's entry points other than `forward` (`loss`, the experts' row methods) are registered as FSDP forward
methods, so their parameters are gathered before they run.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .state import ParallelState

log = logging.getLogger(__name__)

FSDP_MODES = ("zero2", "fsdp")
EXPERT_METHODS = ("sorted_rows", "kernel_rows", "fused_tokens")
ROOT_METHODS = ("loss",)  # a pipeline stage (pp > 1) runs stage_forward instead


def data_parallel_meshes(ps: ParallelState):
    """1-D device meshes over the existing data-parallel and expert-data-parallel groups."""
    from torch.distributed.device_mesh import DeviceMesh

    device_type = ps.device.type
    return DeviceMesh.from_group(ps.dp_group, device_type), DeviceMesh.from_group(ps.edp_group, device_type)


def _shard_dim(group_size: int):
    """FSDP2 placement: dim 0, or the largest dim that divides evenly when dim 0 has fewer rows than ranks (FSDP2
    requires even sharding off dim 0)."""
    from torch.distributed.tensor import Shard

    def place(param: nn.Parameter):
        if param.dim() == 0 or param.shape[0] >= group_size:
            return Shard(0)
        even = [d for d in range(1, param.dim()) if param.shape[d] % group_size == 0]
        return Shard(max(even, key=lambda d: param.shape[d])) if even else Shard(0)

    return place


def uses_fsdp(ps: ParallelState, mode: str) -> bool:
    """Whether `mode` wraps the model with FSDP2 in this layout: it needs process groups, so a single process
    without torch.distributed trains unsharded (there is nothing to shard over)."""
    return mode in FSDP_MODES and ps.dp_group is not None and ps.edp_group is not None


def is_fsdp(model: nn.Module) -> bool:
    """Whether `model` is wrapped by `shard_model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, ps: ParallelState, mode: str, *, bf16: bool, offload: bool) -> nn.Module:
    """Apply FSDP2 to `model` in place (units in the module docstring); returns it. Parameters may be on the CPU:
    FSDP2 moves each shard to the mesh's device (or keeps it on the host with `offload`)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard,
                                        register_fsdp_forward_method)

    from ..model.moe import MoELayer
    from ..model.sharding import check_complete, sharding_table

    if mode not in FSDP_MODES:
        raise ValueError(f"shard_model: mode {mode!r} is not one of {', '.join(FSDP_MODES)}")
    table = sharding_table(model)  # read from the declarations now: afterwards parameters are DTensors
    dp_mesh, edp_mesh = data_parallel_meshes(ps)
    common = dict(
        mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32),
        offload_policy=CPUOffloadPolicy(pin_memory=ps.device.type == "cuda") if offload else OffloadPolicy(),
    )
    reshard = mode == "fsdp"
    for layer in model.layers:
        if isinstance(layer.mlp, MoELayer):
            experts = layer.mlp.experts
            fully_shard(experts, mesh=edp_mesh, reshard_after_forward=reshard,
                        shard_placement_fn=_shard_dim(ps.edp_size), **common)
            experts.set_gradient_divide_factor(float(ps.dp_size))
            if ps.edp_size > 1 and ps.edp_size != ps.dp_size and dist.get_backend(ps.edp_group) == "gloo":
                # FSDP2 reduces with PREMUL_SUM(1/dp) then, which gloo lacks: sum, then divide. (Not over a group
                # of one: torch 2.13 would divide twice there.)
                experts.set_force_sum_reduction_for_comms(True)
            for name in EXPERT_METHODS:
                register_fsdp_forward_method(experts, name)
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard, shard_placement_fn=_shard_dim(ps.dp_size),
                    **common)
    # the root (embedding, final norm, head) stays gathered from forward to backward in both modes: the head's
    # backward comes first (FSDP2's default for the root)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=False, shard_placement_fn=_shard_dim(ps.dp_size),
                **common)
    whole = getattr(model, "is_first", True) and getattr(model, "is_last", True)
    for name in (ROOT_METHODS if whole else ("stage_forward",)):
        register_fsdp_forward_method(model, name)
    model.set_reduce_scatter_unused_params(True)
    check_complete(table, [n for n, _ in model.named_parameters()])  # FSDP2 keeps the names
    log.info("%s: FSDP2 over dp=%d (dense) and edp=%d (experts), %s compute weights%s", mode, ps.dp_size,
             ps.edp_size, "bf16" if bf16 else "fp32", ", optimizer state in host memory" if offload else "")
    return model


__all__ = ["FSDP_MODES", "data_parallel_meshes", "is_fsdp", "shard_model", "uses_fsdp"]
