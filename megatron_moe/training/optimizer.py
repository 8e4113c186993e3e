"""AdamW over the model's parameters, in the four sharding modes of `train.sharding`.

    opt = TrainOptimizer(model, cfg.train, ps, sharded=is_fsdp)
    opt.set_lr(lr); opt.step(); opt.zero_grad()
    opt.owned_states()            # {param name: AdamW state} for the parameters whose state this rank holds
    opt.load_owned_states(fn)     # fn(name, param) -> state or None

Parameter groups: weight decay on matrices (dim >= 2) except norms; no decay on norms and 1-D parameters
(biases, router expert bias). Dense parameters and expert parameters (`is_expert` in the sharding table) get
separate optimizers:
  none    torch AdamW; every rank holds the state of its whole (model-parallel) shard;
  zero1   torch's `ZeroRedundancyOptimizer`, dense over the data-parallel group, experts over the
          expert-data-parallel group (their replicas), so every rank keeps the AdamW moments of about 1/dp of the
          dense and 1/edp of its expert parameters. The partition is greedy by size and depends only on local
          shapes, so all TP/EP ranks of a replica own the same parameter names;
  zero2 / fsdp   the parameters are FSDP2 DTensors (parallel/fsdp.py): AdamW steps each rank's shards, so the
          state is sharded like them (`sharded=True`); with offload they, and the step, live on the CPU.
Fused AdamW is used for CUDA parameters, foreach otherwise.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from torch import nn

from ..config import TrainConfig
from ..model.sharding import sharding_table
from ..parallel import ParallelState

log = logging.getLogger(__name__)


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases and other 1-D parameters are not decayed."""
    return param.dim() < 2 or name.endswith("norm.weight") or "norm." in name


def param_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float) -> list[dict]:
    decay = [p for n, p in named if not no_decay(n, p)]
    keep = [p for n, p in named if no_decay(n, p)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


class TrainOptimizer:
    """One or two AdamW (or ZeroRedundancyOptimizer) instances: dense parameters and expert parameters."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, ps: ParallelState, sharded: bool = False):
        self.cfg, self.ps, self.sharded = cfg, ps, sharded
        table = sharding_table(model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.name_of = {p: n for n, p in named}
        dense = [(n, p) for n, p in named if not table[n].is_expert]
        expert = [(n, p) for n, p in named if table[n].is_expert]
        self.parts: list[tuple[torch.optim.Optimizer, bool]] = []  # (optimizer, is_zero)
        for subset, group, size in ((dense, ps.dp_group, ps.dp_size), (expert, ps.edp_group, ps.edp_size)):
            if subset:
                self.parts.append(self._make(subset, group, size))

    def _make(self, named, group, size) -> tuple[torch.optim.Optimizer, bool]:
        cfg = self.cfg
        kwargs = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        if named[0][1].is_cuda:
            kwargs["fused"] = True
        elif self.sharded:
            kwargs["foreach"] = True  # DTensor parameters: one dispatch per op over the list, not per tensor
        groups = param_groups(named, cfg.weight_decay)
        if cfg.sharding == "zero1" and size > 1:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, process_group=group,
                                           **kwargs), True
        return torch.optim.AdamW(groups, **kwargs), False

    # ----------------------------------------------------------------------------------- stepping
    @property
    def param_groups(self) -> list[dict]:
        return [g for opt, _ in self.parts for g in opt.param_groups]

    def set_lr(self, lr: float) -> None:
        for g in self.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        for opt, _ in self.parts:
            opt.step()

    def zero_grad(self) -> None:
        for opt, _ in self.parts:
            opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------- state
    def _owned(self) -> list[tuple[torch.optim.Optimizer, list[torch.Tensor]]]:
        """(optimizer holding the state, its parameters) per part, restricted to this rank's shard."""
        out = []
        for opt, is_zero in self.parts:
            if is_zero:
                mine = [p for p, r in opt._param_to_rank.items() if r == opt.rank]
                out.append((opt.optim, mine))
            else:
                out.append((opt, [p for g in opt.param_groups for p in g["params"]]))
        return out

    def owned_params(self) -> dict[str, torch.Tensor]:
        """name -> parameter for every parameter whose optimizer state lives on this rank."""
        return {self.name_of[p]: p for _, ps in self._owned() for p in ps}

    def owned_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """name -> AdamW state (step, exp_avg, exp_avg_sq) of this rank's parameters that have state."""
        out = {}
        for opt, params in self._owned():
            for p in params:
                st = opt.state.get(p)
                if st:
                    out[self.name_of[p]] = st
        return out

    @torch.no_grad()
    def load_owned_states(self, fetch: Callable[[str, torch.Tensor], Optional[dict]]) -> int:
        """Install state for this rank's parameters: fetch(name, param) -> {step, exp_avg, exp_avg_sq} or None.
        Returns how many parameters got state."""
        n = 0
        for opt, params in self._owned():
            for p in params:
                st = fetch(self.name_of[p], p)
                if st is not None:
                    opt.state[p] = st
                    n += 1
        return n
