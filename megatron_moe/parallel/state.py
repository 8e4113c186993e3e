"""Process groups: initialise torch.distributed and megatron-core parallel_state, hand groups to the model.

Layout (megatron-core order "tp-cp-ep-dp-pp", no context parallel; pipeline stages outermost):
  dense parts: rank = tp_rank + tp * (dp_rank + dp * pp_rank)
  experts:     rank = etp_rank + etp * (ep_rank + ep * (edp_rank + edp * pp_rank))
so the ranks of one pipeline stage are a contiguous block of world / pp.
`ParallelState` is what model code receives; it never looks groups up itself.
"""
from __future__ import annotations

import datetime
import logging
import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from ..config import ParallelConfig
from .env import LaunchEnv, detect_launch_env

log = logging.getLogger(__name__)


@dataclass
class ParallelState:
    """Groups, ranks and sizes of this process. Groups are None in a single-process run."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    tp_group: Optional[dist.ProcessGroup] = None
    tp_size: int = 1
    tp_rank: int = 0
    dp_group: Optional[dist.ProcessGroup] = None
    dp_size: int = 1
    dp_rank: int = 0
    ep_group: Optional[dist.ProcessGroup] = None
    ep_size: int = 1
    ep_rank: int = 0
    etp_group: Optional[dist.ProcessGroup] = None
    etp_size: int = 1
    etp_rank: int = 0
    edp_group: Optional[dist.ProcessGroup] = None
    edp_size: int = 1
    edp_rank: int = 0
    pp_group: Optional[dist.ProcessGroup] = None
    pp_size: int = 1
    pp_rank: int = 0
    sp: bool = False
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def stage_ranks(self) -> list[int]:
        """Global ranks of this rank's pipeline stage (all ranks when pp = 1)."""
        size = self.world_size // self.pp_size
        return list(range(self.pp_rank * size, (self.pp_rank + 1) * size))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _device_for(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_backend(backend: str) -> str:
    """parallel.backend with auto resolved: nccl where CUDA is available, else gloo (CPU)."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def init_parallel(cfg: ParallelConfig, env: Optional[LaunchEnv] = None, timeout_s: int = 600) -> ParallelState:
    """Initialise torch.distributed (if world > 1 or already up) and megatron-core parallel_state."""
    from megatron.core import parallel_state as mpu

    env = env or detect_launch_env()
    backend = resolve_backend(cfg.backend)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        if env.launcher == "single" and "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())  # two plain `python` runs on one machine must not collide
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    world, rank = dist.get_world_size(), dist.get_rank()
    device = _device_for(backend, env.local_rank)
    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(tensor_model_parallel_size=cfg.tp, expert_model_parallel_size=cfg.ep,
                                  expert_tensor_parallel_size=cfg.expert_tp,
                                  pipeline_model_parallel_size=cfg.pp)
    ps = ParallelState(
        world_size=world, rank=rank, local_rank=env.local_rank,
        tp_group=mpu.get_tensor_model_parallel_group(), tp_size=cfg.tp, tp_rank=mpu.get_tensor_model_parallel_rank(),
        dp_group=mpu.get_data_parallel_group(), dp_size=mpu.get_data_parallel_world_size(),
        dp_rank=mpu.get_data_parallel_rank(),
        ep_group=mpu.get_expert_model_parallel_group(), ep_size=cfg.ep, ep_rank=mpu.get_expert_model_parallel_rank(),
        etp_group=mpu.get_expert_tensor_parallel_group(), etp_size=cfg.expert_tp,
        etp_rank=mpu.get_expert_tensor_parallel_rank(),
        edp_group=mpu.get_expert_data_parallel_group(), edp_size=mpu.get_expert_data_parallel_world_size(),
        edp_rank=mpu.get_expert_data_parallel_rank(),
        pp_group=mpu.get_pipeline_model_parallel_group(), pp_size=cfg.pp,
        pp_rank=mpu.get_pipeline_model_parallel_rank(), sp=cfg.sp, device=device)
    _check_layout(ps)
    log.info("parallel: world=%d tp=%d dp=%d pp=%d ep=%d etp=%d edp=%d sp=%s backend=%s (%s)", world, ps.tp_size,
             ps.dp_size, ps.pp_size, ps.ep_size, ps.etp_size, ps.edp_size, ps.sp, backend, env.launcher)
    return ps


def _check_layout(ps: ParallelState) -> None:
    """The rank formulas in the module docstring are what checkpoints and data slicing assume."""
    want_dense = ps.tp_rank + ps.tp_size * (ps.dp_rank + ps.dp_size * ps.pp_rank)
    want_expert = ps.etp_rank + ps.etp_size * (ps.ep_rank + ps.ep_size * (ps.edp_rank + ps.edp_size * ps.pp_rank))
    if want_dense != ps.rank or want_expert != ps.rank:
        raise RuntimeError(f"unexpected megatron-core rank layout on rank {ps.rank}: dense formula gives "
                           f"{want_dense}, expert formula gives {want_expert}")


def pipeline_stage_ranks() -> list[int]:
    """Global ranks of this process's pipeline stage, a contiguous block (every rank without pipeline
    parallelism). The checkpoint code places a stage's tensors on these ranks only."""
    from megatron.core import parallel_state as mpu

    world = dist.get_world_size() if dist.is_initialized() else 1
    if not mpu.model_parallel_is_initialized() or mpu.get_pipeline_model_parallel_world_size() == 1:
        return list(range(world))
    size = world // mpu.get_pipeline_model_parallel_world_size()
    first = mpu.get_pipeline_model_parallel_rank() * size
    return list(range(first, first + size))


def destroy_parallel() -> None:
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_all(seed: int, offset: int = 0) -> None:
    """Seed python, numpy and torch. Model init uses the same seed on every rank (megatron-core's CPU init builds
    the full master weight and slices it, so every layout initialises the same function); pass a rank-dependent
    `offset` only for streams that must differ per rank."""
    s = seed + offset
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
