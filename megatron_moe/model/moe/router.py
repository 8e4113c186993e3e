"""Routers: score tokens, pick top-k experts, and produce the per-expert sums the balance losses are made of.

Legend: T tokens (this rank), D hidden, E experts, K top-k, N noise width (E or D).

All router math runs in fp32. Routers (moe.router):
  noisy_topk    LLaMA-MoE TopKBalancedNoisyGate: logits = g(x) [+ ε·(softplus(x W_noise) + noise_epsilon) in
                training], top-k, softmax over the k. Balance: cv²(importance) + cv²(load), load = Σ Φ(...) (the
                smooth probability of staying in the top-k, Shazeer 2017) when noisy, else hard counts.
  switch        top-1 of softmax(g(x · jitter)); weight = the chosen probability. Balance: E·Σ f_i P_i.
  softmax_topk  Mixtral: softmax over E, top-k, renormalise over the k. Balance: E·Σ f_i P_i.
  sigmoid       DeepSeek-V3: s = sigmoid(g(x)); choose top-k of s + expert_bias (the bias only chooses),
                weights = s renormalised over the k (k > 1). Balance (optional): E·Σ f_i P_i with P from s / Σ_E s.
Every router multiplies its weights by the score scale s (moe.score_scale, default E/K) and can add the z-loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...config import MoEConfig
from ..sharding import declare
from .aux import noisy_balance_loss, switch_balance_loss


@dataclass
class Routing:
    """weights_TK fp32 (score scale included), indices_TK int64, and this rank's per-expert sums over tokens,
    from which every balance loss is computed (after a reduction over ranks, see aux.global_sums):
      "importance" [E]  Σ top-k gate weights (noisy_topk)       "load" [E]  Σ Φ(...) or hard counts (noisy_topk)
      "prob_sum"   [E]  Σ router probabilities (other routers)  "counts" [E] assignments per expert (pre-capacity)
      "z"          [1]  Σ logsumexp(logits)² (z-loss on)        "T" [1]      tokens"""

    weights_TK: torch.Tensor
    indices_TK: torch.Tensor
    sums: dict


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))


def _counts(indices_TK: torch.Tensor, E: int) -> torch.Tensor:
    return torch.bincount(indices_TK.reshape(-1), minlength=E).float()


class Router(nn.Module):
    def __init__(self, hidden: int, cfg: MoEConfig, sequence_parallel: bool):
        super().__init__()
        E = cfg.num_experts
        self.kind, self.E, self.k, self.scale = cfg.router, E, cfg.top_k, cfg.scale
        self.cfg = cfg
        if cfg.gate_network == "linear":
            self.gate = nn.Linear(hidden, E, bias=False)
        else:
            self.gate = nn.Sequential(nn.Linear(hidden, E, bias=False), nn.Tanh(), nn.Linear(E, E, bias=False))
        if self.kind == "noisy_topk":
            self.noise = nn.Linear(hidden, E, bias=False)
        if self.kind == "sigmoid":
            self.register_buffer("expert_bias", torch.zeros(E))
            self.register_buffer("load_since_update", torch.zeros(E, dtype=torch.float64), persistent=False)
        for name, _ in self.named_parameters():
            # under SP every TP rank routes different tokens: gradients are partial per TP rank
            declare(self, name, sequence_parallel=sequence_parallel)

    # ------------------------------------------------------------------------------------------- noise
    def noise_spec(self, hidden: int) -> Optional[tuple[int, str]]:
        """(N, kind) of the training noise this router needs per token, or None."""
        if self.kind == "noisy_topk" and self.cfg.noisy_gate:
            return self.E, "normal"
        if self.kind == "switch" and self.cfg.switch_jitter > 0:
            return hidden, "uniform"
        return None

    # ----------------------------------------------------------------------------------------- forward
    def logits(self, x32_TD: torch.Tensor) -> torch.Tensor:
        if isinstance(self.gate, nn.Linear):
            return F.linear(x32_TD, self.gate.weight.float())
        h = torch.tanh(F.linear(x32_TD, self.gate[0].weight.float()))
        return F.linear(h, self.gate[2].weight.float())

    def forward(self, x_TD: torch.Tensor, noise_TN: Optional[torch.Tensor] = None, use_kernels: bool = False,
                force_all: bool = False) -> Routing:
        # fp32 router math also under bf16 autocast (which would run the gate's linears in bf16: rounded logits
        # tie often, and the chosen experts would depend on rounding)
        with torch.autocast(x_TD.device.type, enabled=False):
            return self._forward(x_TD, noise_TN, use_kernels, force_all)

    def _forward(self, x_TD, noise_TN, use_kernels, force_all) -> Routing:
        x32_TD = x_TD.float()
        T, E = x_TD.shape[0], self.E
        if force_all:  # converter --verify: every expert, weight 1, no scale, no losses
            idx_TK = torch.arange(E, device=x_TD.device).expand(T, E).contiguous()
            w_TK = torch.ones(T, E, device=x_TD.device)
            return Routing(w_TK, idx_TK, {"counts": _counts(idx_TK, E), "T": x32_TD.new_tensor([float(T)])})
        if self.kind == "switch" and noise_TN is not None:
            eps = self.cfg.switch_jitter
            x32_TD = x32_TD * (1.0 - eps + 2.0 * eps * noise_TN)  # multiplicative jitter, router input only
        logits_TE = self.logits(x32_TD)
        route = getattr(self, f"_route_{self.kind}")
        routing = route(x32_TD, logits_TE, noise_TN, use_kernels)
        routing.sums["T"] = x32_TD.new_tensor([float(T)])
        if self.cfg.z_loss_coeff > 0:
            routing.sums["z"] = (torch.logsumexp(logits_TE, dim=-1) ** 2).sum().reshape(1)
        return routing

    def _route_noisy_topk(self, x32_TD, clean_TE, noise_TE, use_kernels):
        k, E = self.k, self.E
        std_TE = None
        logits_TE = clean_TE
        if noise_TE is not None:
            std_TE = F.softplus(F.linear(x32_TD, self.noise.weight.float())) + self.cfg.noise_epsilon
            logits_TE = clean_TE + noise_TE * std_TE
        top_TJ, idx_TJ = logits_TE.topk(min(k + 1, E), dim=-1)
        idx_TK = idx_TJ[:, :k]
        gates_TK = torch.softmax(top_TJ[:, :k], dim=-1)
        importance_E = clean_TE.new_zeros(E).scatter_add(0, idx_TK.reshape(-1), gates_TK.reshape(-1))
        counts_E = _counts(idx_TK, E)
        if std_TE is not None and k < E:
            thr_in_T1, thr_out_T1 = top_TJ[:, k:k + 1], top_TJ[:, k - 1:k]
            is_in_TE = logits_TE > thr_in_T1
            p_in_TE = _normal_cdf((clean_TE - thr_in_T1) / std_TE)
            p_out_TE = _normal_cdf((clean_TE - thr_out_T1) / std_TE)
            load_E = torch.where(is_in_TE, p_in_TE, p_out_TE).sum(0)
        else:
            load_E = counts_E
        return Routing(gates_TK * self.scale, idx_TK, {"importance": importance_E, "load": load_E,
                                                       "counts": counts_E})

    def _route_switch(self, x32_TD, logits_TE, noise, use_kernels):
        probs_TE = torch.softmax(logits_TE, dim=-1)
        w_T1, idx_T1 = probs_TE.max(dim=-1, keepdim=True)
        return Routing(w_T1 * self.scale, idx_T1, {"prob_sum": probs_TE.sum(0), "counts": _counts(idx_T1, self.E)})

    def _route_softmax_topk(self, x32_TD, logits_TE, noise, use_kernels):
        if use_kernels:
            import moe_kernels

            w_TK, idx_TK, _, psum_E = moe_kernels.topk_gating(logits_TE, self.k, "softmax", scale=self.scale,
                                                              return_probs_sum=True)
            return Routing(w_TK, idx_TK, {"prob_sum": psum_E, "counts": _counts(idx_TK, self.E)})
        probs_TE = torch.softmax(logits_TE, dim=-1)
        p_TK, idx_TK = probs_TE.topk(self.k, dim=-1)
        w_TK = p_TK / p_TK.sum(-1, keepdim=True) * self.scale
        return Routing(w_TK, idx_TK, {"prob_sum": probs_TE.sum(0), "counts": _counts(idx_TK, self.E)})

    def _route_sigmoid(self, x32_TD, logits_TE, noise, use_kernels):
        bias_E = self.expert_bias.float()
        if use_kernels:
            import moe_kernels

            w_TK, idx_TK, _, psum_E = moe_kernels.topk_gating(logits_TE, self.k, "sigmoid", bias=bias_E,
                                                              scale=self.scale, return_probs_sum=True)
            return Routing(w_TK, idx_TK, {"prob_sum": psum_E, "counts": _counts(idx_TK, self.E)})
        s_TE = torch.sigmoid(logits_TE)
        idx_TK = (s_TE.detach() + bias_E).topk(self.k, dim=-1).indices
        s_TK = s_TE.gather(1, idx_TK)
        w_TK = s_TK / s_TK.sum(-1, keepdim=True) if self.k > 1 else s_TK
        psum_E = (s_TE / s_TE.sum(-1, keepdim=True)).sum(0)
        return Routing(w_TK * self.scale, idx_TK, {"prob_sum": psum_E, "counts": _counts(idx_TK, self.E)})

    # ------------------------------------------------------------------------------------------ losses
    def losses(self, g: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(balance loss, z-loss), unweighted, from the *global* sums (see aux.global_sums)."""
        T = g["T"][0]
        if "importance" not in g and "prob_sum" not in g:  # force_all
            zero = T.new_zeros(())
            return zero, zero
        if self.kind == "noisy_topk":
            aux = noisy_balance_loss(g["importance"], g["load"])
        else:
            aux = switch_balance_loss(g["prob_sum"], g["counts"], T, self.k)
        z = g["z"][0] / T if "z" in g else T.new_zeros(())
        return aux, z

    # --------------------------------------------------------------------------------- expert bias
    @torch.no_grad()
    def record_load(self, tokens_per_expert_E: torch.Tensor) -> None:
        if self.kind == "sigmoid":
            self.load_since_update += tokens_per_expert_E.double()

    @torch.no_grad()
    def update_expert_bias(self) -> None:
        """Aux-loss-free balancing (DeepSeek-V3): b += rate · sign(mean_load − load_i), from the global load
        recorded since the last update (identical on every rank, so no communication is needed); then reset."""
        if self.kind != "sigmoid":
            return
        load_E = self.load_since_update
        step_E = torch.sign(load_E.mean() - load_E) * self.cfg.bias_update_rate
        self.expert_bias += step_E.to(self.expert_bias.dtype)
        load_E.zero_()
