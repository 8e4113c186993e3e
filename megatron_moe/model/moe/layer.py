"""The MoE layer: route -> dispatch -> compute -> combine (+ shared experts), same function in every layout.

Legend: B batch, S sequence (local chunk under SP), T tokens, D hidden, E experts, K top-k, R rows at experts.

    layer = MoELayer(model_cfg, moe_cfg, ps, layer_idx)
    y_BSD = layer(x_BSD)                 # aux/z losses enter the gradient by themselves (see aux.py)
    layer.last_stats                     # {aux_loss, z_loss, tokens_per_expert [E], load_cv, max_vio, dropped_frac}
    layer.update_expert_bias()           # sigmoid router: once per optimizer step
    layer.noise_context = NoiseContext(key, first_sample)     # set by the trainer per micro-batch (noise.py)
    layer.balance                        # BalanceState: micro / collect / global balance loss (balance.py)
    layer.force_all_experts = True       # every token to every expert with weight 1 (converter --verify)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...config import ModelConfig, MoEConfig
from ...parallel import ParallelState
from .aux import attach_aux_loss, global_sums, load_cv, max_violation
from .balance import BalanceState
from .dispatcher import Dispatcher, Plan, apply_capacity
from .experts import Experts
from .noise import NoiseContext, batch_noise, noise_key
from .router import Router, Routing
from .shared import SharedExperts


class MoELayer(nn.Module):
    """Parameters (canonical names): router.gate.weight | router.gate.{0,2}.weight, router.noise.weight,
    buffer router.expert_bias, experts.w1/w3/w2, shared.w1/w3/w2.weight."""

    def __init__(self, model_cfg: ModelConfig, moe_cfg: MoEConfig, ps: ParallelState, layer_idx: int = 0):
        super().__init__()
        D, E = model_cfg.hidden_size, moe_cfg.num_experts
        self.cfg, self.ps, self.layer_idx, self.hidden = moe_cfg, ps, layer_idx, D
        self.router = Router(D, moe_cfg, sequence_parallel=ps.sp and ps.tp_size > 1)
        self.experts = Experts(D, moe_cfg.ffn_size(model_cfg), E, ps)
        self.shared = None
        if moe_cfg.num_shared_experts > 0:
            fs = moe_cfg.shared_expert_ffn_size or moe_cfg.ffn_size(model_cfg)
            self.shared = SharedExperts(D, moe_cfg.num_shared_experts * fs, moe_cfg.shared_expert_scale, ps)
        self.dispatcher = Dispatcher(E, ps)
        # ranks whose routed tokens differ: DP, and TP under SP (without SP the router sees all TP tokens)
        self.stats_groups = [ps.dp_group] + ([ps.tp_group] if ps.sp else [])
        self.force_all_experts = False
        self.loss_scale = 1.0
        self.noise_context: Optional[NoiseContext] = None
        self.balance = BalanceState()
        self.last_stats: dict = {}

    # ------------------------------------------------------------------------------------ trainer API
    def set_loss_scale(self, scale: float) -> None:
        """Factor of the aux/z gradient; the trainer passes 1 / micro-batches (see aux.py)."""
        self.loss_scale = float(scale)

    def update_expert_bias(self) -> None:
        self.router.update_expert_bias()

    def use_kernels(self, x: torch.Tensor) -> bool:
        mode = self.cfg.use_kernels
        return mode == "on" or (mode == "auto" and x.is_cuda)

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(B * S, D)
        kernels = self.use_kernels(x_BSD)
        routing, aux = self.route(x_TD, B, S, kernels)
        x_TD, w_TK, idx_TK = self.dispatcher.shard(x_TD, routing.weights_TK, routing.indices_TK)
        if not self.force_all_experts:
            idx_TK = apply_capacity(w_TK, idx_TK, self.cfg.num_experts, self.cfg.capacity_factor)
        if kernels and self.ps.ep_size == 1 and self.ps.etp_size == 1:
            y_TD = self.experts.fused_tokens(x_TD, w_TK, idx_TK)  # dispatch+compute+combine fused
        else:
            x_RD, w_R, plan = self.dispatch(x_TD, w_TK, idx_TK)
            out_RD = self.compute(x_RD, w_R, plan, kernels)  # rows' outputs scaled by their routing weights
            y_TD = self.combine(out_RD, plan)
        self.last_stats["dropped_frac"] = (idx_TK < 0).float().mean().detach()
        y_BSD = self.dispatcher.unshard(y_TD).view(B, S, D).to(x_BSD.dtype)
        if self.shared is not None:
            y_BSD = y_BSD + self.shared(x_BSD)
        if self.training and torch.is_grad_enabled():
            # micro: the trainer's 1/n_micro, like the LM loss; global: the surrogate sums over micro-batches
            scale = self.ps.dp_size * (1.0 if self.balance.mode == "global" else self.loss_scale)
            y_BSD = attach_aux_loss(y_BSD, aux, scale)
        return y_BSD

    # ---------------------------------------------------------------------------------- 1. route
    def route(self, x_TD: torch.Tensor, B: int, S: int, kernels: bool) -> tuple[Routing, torch.Tensor]:
        """Router choices, plus the weighted aux + z loss term whose gradient enters the model (balance.py says
        which tokens it covers); fills last_stats with the values of the loss and the global load."""
        noise_TN = self._noise(x_TD, B, S)
        routing = self.router(x_TD, noise_TN, use_kernels=kernels, force_all=self.force_all_experts)
        sums, bal, cfg = routing.sums, self.balance, self.cfg
        graph = (cfg.aux_loss_coeff or cfg.z_loss_coeff) and bal.mode == "micro"
        g = global_sums(sums if graph else {k: v.detach() for k, v in sums.items()}, self.stats_groups)
        if bal.mode == "collect":
            bal.add(g)
            aux, z = self.router.losses(g)
            term = aux.new_zeros(())
        elif bal.mode == "global":
            aux, z = bal.value, bal.z_value
            term = bal.surrogate(sums)
        else:
            aux, z = self.router.losses(g)
            term = cfg.aux_loss_coeff * aux + cfg.z_loss_coeff * z
        tokens_E = g["counts"].round().long()
        if self.training and bal.mode != "collect":
            self.router.record_load(tokens_E)
        self.last_stats = {"aux_loss": aux.detach(), "z_loss": z.detach(), "tokens_per_expert": tokens_E,
                           "load_cv": load_cv(tokens_E), "max_vio": max_violation(tokens_E)}
        return routing, term

    def _noise(self, x_TD: torch.Tensor, B: int, S: int):
        spec = self.router.noise_spec(self.hidden)
        if not self.training or spec is None or self.force_all_experts:
            return None
        N, kind = spec
        ps = self.ps
        ctx = self.noise_context or NoiseContext(noise_key(), ps.dp_rank * B)
        S_full = S * ps.tp_size if ps.sp else S
        noise_BSN = batch_noise(ctx.key, self.layer_idx, ctx.first_sample, B, S_full, N, kind, x_TD.device)
        if ps.sp:
            noise_BSN = noise_BSN[:, ps.tp_rank * S:(ps.tp_rank + 1) * S]
        return noise_BSN.reshape(B * S, N)

    # ------------------------------------------------------------------------- 2-4. token movement
    def dispatch(self, x_TD: torch.Tensor, w_TK: torch.Tensor,
                 idx_TK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Plan]:
        return self.dispatcher.dispatch(x_TD, w_TK, idx_TK)

    def compute(self, x_RD: torch.Tensor, w_R: torch.Tensor, plan: Plan, kernels: bool) -> torch.Tensor:
        if kernels:
            return self.experts.kernel_rows(x_RD, w_R, plan.counts_e)
        return self.experts.sorted_rows(x_RD, w_R, plan.counts_e)

    def combine(self, out_RD: torch.Tensor, plan: Plan) -> torch.Tensor:
        return self.dispatcher.combine(out_RD, plan)

