"""Balance-loss scope: per micro-batch (the usual form) or over the whole global batch of the step.

Every balance loss here is a function L(x) of per-expert *sums over tokens* x (importance, load, probability
mass, counts, Σ logsumexp², T; see router.py). `moe.balance_scope` decides which tokens x sums over:

  micro   x = the sums of one micro-batch over the ranks that hold different tokens (DP, and TP under SP);
          each micro-batch adds coeff * ∂L(x_m)/∂θ / n_micro, as megatron-core and LLaMA-MoE do.
  global  x = the sums of the whole global batch of the step: every micro-batch of every DP rank (Qwen's
          global-batch balancing, arXiv 2501.11873). The trainer first runs the step's micro-batches once
          without gradients ("collect": each MoE layer accumulates its DP-global sums), then every layer takes
          g = ∂L/∂x at x_global (`BalanceState.finalize`), and in the real passes each micro-batch injects the
          surrogate ⟨g, x_local⟩. Because x_global = Σ over micro-batches and ranks of x_local, the summed
          gradient is exactly ∂L(x_global)/∂θ: the same for any micro-batch size and DP degree. It costs one
          forward pass without gradients per step (about a third of the step's compute).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

BALANCE_SCOPES = ("micro", "global")


class BalanceState:
    """One MoE layer's view of the global-batch balance loss for the current step."""

    def __init__(self):
        self.mode = "micro"                     # micro | collect | global
        self.sums: Optional[dict] = None        # collect: Σ over micro-batches of the DP-global sums
        self.grads: dict = {}                   # global: ∂L/∂x at x_global, per differentiable key
        self.value = torch.zeros(())            # global: L(x_global) (unweighted balance loss) for logging
        self.z_value = torch.zeros(())

    def start_collect(self) -> None:
        self.mode, self.sums, self.grads = "collect", None, {}

    def add(self, global_sums: dict) -> None:
        """collect: add one micro-batch's DP-global sums (detached)."""
        g = {k: v.detach().double() for k, v in global_sums.items()}
        self.sums = g if self.sums is None else {k: self.sums[k] + g[k] for k in g}

    def finalize(self, losses: Callable[[dict], tuple], aux_coeff: float, z_coeff: float) -> None:
        """From the collected sums: the loss value and its gradient w.r.t. the sums; switch to global mode."""
        if self.sums is None:
            raise RuntimeError("global balance: no micro-batch was collected before the step")
        leaves = {k: v.float().clone().requires_grad_(True) for k, v in self.sums.items()}
        aux, z = losses(leaves)
        total = aux_coeff * aux + z_coeff * z
        keys = [k for k in leaves if k not in ("T", "counts")]
        grads = torch.autograd.grad(total, [leaves[k] for k in keys], allow_unused=True) if total.requires_grad \
            else [None] * len(keys)
        self.grads = {k: g.detach() for k, g in zip(keys, grads) if g is not None}
        self.value, self.z_value = aux.detach(), z.detach()
        self.mode = "global"

    def surrogate(self, local_sums: dict) -> torch.Tensor:
        """⟨g, x_local⟩: its gradient is this micro-batch's share of ∂L(x_global)/∂θ."""
        terms = [(self.grads[k].to(local_sums[k].device) * local_sums[k].float()).sum() for k in self.grads
                 if k in local_sums]
        return torch.stack(terms).sum() if terms else torch.zeros((), device=next(iter(local_sums.values())).device)

    def reset(self) -> None:
        self.mode, self.sums, self.grads = "micro", None, {}
