"""Balance losses (cv², Switch), router z-loss, the global reduction of their statistics, and the autograd trick
that lets them reach the gradient without the caller adding them to its loss.

Legend: T tokens (local), E experts, K top-k.

Every loss here is a function of per-expert *sums over tokens* (importance, load, probability mass, counts) and of
Σ logsumexp², Σ T. `global_sums` all-reduces those sums over the ranks that hold different tokens (DP, and TP under
sequence parallelism) with the autograd `all_reduce_sum` (backward: identity), so the loss is the loss of the global
micro-batch whatever the layout, and each rank's backward gives the part of its derivative that flows through
its own tokens. Summed over ranks that is the whole derivative.

Gradient scale (`AuxLossInjector`): the injected gradient of (coeff·aux + z_coeff·z) is multiplied by
`loss_scale · dp_size`. The trainer sets loss_scale = 1 / micro-batches (it scales the LM loss the same way) and
averages gradients over DP (÷ dp_size), so the net effect is exactly coeff·∂aux/∂θ per micro-batch, like the LM
loss. A caller that *sums* gradients over DP instead sets loss_scale = 1 / dp_size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...parallel import all_reduce_sum

CV_EPS = 1e-10


def cv_squared(x_E: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation var(x) / (mean(x)² + 1e-10), unbiased variance (as LLaMA-MoE/Shazeer);
    0 for a single expert."""
    x_E = x_E.float()
    if x_E.numel() < 2:
        return x_E.new_zeros(())
    return x_E.var() / (x_E.mean() ** 2 + CV_EPS)


def noisy_balance_loss(importance_E: torch.Tensor, load_E: torch.Tensor) -> torch.Tensor:
    """LLaMA-MoE TopKBalancedNoisyGate balance loss: cv²(importance) + cv²(load)."""
    return cv_squared(importance_E) + cv_squared(load_E)


def switch_balance_loss(prob_sum_E: torch.Tensor, counts_E: torch.Tensor, num_tokens: torch.Tensor,
                        top_k: int) -> torch.Tensor:
    """E · Σ_i f_i · P_i with f_i = counts_i / (T·K) (fraction of assignments) and P_i = prob_sum_i / T (mean router
    probability). 1.0 at perfect balance; K = 1 is the Switch Transformer loss."""
    E = prob_sum_E.numel()
    f_E = counts_E.detach().float() / (num_tokens * top_k)
    P_E = prob_sum_E.float() / num_tokens
    return E * (f_E * P_E).sum()


def global_sums(parts: dict, groups: Sequence[Optional[object]]) -> dict:
    """All-reduce a dict of (differentiable) tensors over `groups` in one fp64 buffer per group; same keys back,
    in fp32. fp64 keeps token counts exact and sums reproducible to well below fp32 rounding."""
    keys = list(parts)
    flat = torch.cat([parts[k].reshape(-1).double() for k in keys])
    for group in groups:
        flat = all_reduce_sum(flat, group)
    out, off = {}, 0
    for k in keys:
        n = parts[k].numel()
        out[k] = flat[off:off + n].view_as(parts[k]).float()
        off += n
    return out


class AuxLossInjector(torch.autograd.Function):
    """forward: returns y unchanged. backward: passes dy through and gives `aux` the gradient `grad_scale`
    (as megatron-core's MoEAuxLossAutoScaler), so d(grad_scale · aux) flows into the router."""

    @staticmethod
    def forward(ctx, y, aux, grad_scale: float):
        ctx.grad_scale = grad_scale
        ctx.save_for_backward(aux)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, dy):
        (aux,) = ctx.saved_tensors
        return dy, torch.full_like(aux, ctx.grad_scale), None


def attach_aux_loss(y: torch.Tensor, aux: torch.Tensor, grad_scale: float) -> torch.Tensor:
    """y unchanged; in backward, aux receives d(grad_scale · aux). No-op when aux needs no gradient."""
    if not aux.requires_grad or grad_scale == 0.0:
        return y
    return AuxLossInjector.apply(y, aux, grad_scale)


def max_violation(tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
    """MaxVio = max_i(load_i / mean load) - 1 (0 at perfect balance, E - 1 when one expert takes everything;
    0 when there are no tokens)."""
    t = tokens_per_expert_E.double()
    m = t.mean()
    return torch.where(m > 0, t.max() / m.clamp(min=1e-12) - 1.0, torch.zeros_like(m)).float()


def load_cv(tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
    """Coefficient of variation of the load: population std / mean of tokens per expert (0 when no tokens)."""
    t = tokens_per_expert_E.double()
    m = t.mean()
    return torch.where(m > 0, t.std(unbiased=False) / m.clamp(min=1e-12), torch.zeros_like(m)).float()
