"""Routed experts: stacked SwiGLU weights of this rank's experts, and the expert computation.

Legend: R rows (token copies at this rank's experts), D hidden, E experts, e local experts (E / ep),
F_l local expert FFN width (F / etp), K top-k.

    w1 (gate) [e, F_l, D]   w3 (up) [e, F_l, D]   w2 (down) [e, D, F_l]     (canonical: experts.w1 [E, F, D] ...)
    expert(x) = w2 @ (silu(w1 @ x) * (w3 @ x))

Splits: experts over EP (dim 0), the F dim over ETP; every expert parameter is `is_expert`.
Torch path: rows arrive sorted by local expert with their routing weights; one matmul triple per non-empty expert
on a contiguous slice, in one autograd Function that writes outputs and weight gradients in place (sorted_mlp.py).
Kernel path: `moe_kernels.moe_mlp` (Triton on CUDA). Both return the rows' outputs already weighted.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ...parallel import ParallelState
from ..sharding import Split, declare
from .sorted_mlp import sorted_swiglu


class Experts(nn.Module):
    def __init__(self, hidden: int, ffn: int, num_experts: int, ps: ParallelState):
        super().__init__()
        if num_experts % ps.ep_size:
            raise ValueError(f"expert parallel size {ps.ep_size} does not divide num_experts={num_experts}")
        if ffn % ps.etp_size:
            raise ValueError(f"expert tensor parallel size {ps.etp_size} does not divide expert_ffn_size={ffn}")
        e, F_l = num_experts // ps.ep_size, ffn // ps.etp_size
        self.num_local = e
        self.w1 = nn.Parameter(torch.empty(e, F_l, hidden))
        self.w3 = nn.Parameter(torch.empty(e, F_l, hidden))
        self.w2 = nn.Parameter(torch.empty(e, hidden, F_l))
        ep, etp = Split("ep", 0, ps.ep_size, ps.ep_rank), (ps.etp_size, ps.etp_rank)
        declare(self, "w1", ep, Split("etp", 1, *etp), is_expert=True)
        declare(self, "w3", ep, Split("etp", 1, *etp), is_expert=True)
        declare(self, "w2", ep, Split("etp", 2, *etp), is_expert=True)

    def sorted_rows(self, x_RD: torch.Tensor, w_R: Optional[torch.Tensor], counts_e: Sequence[int]) -> torch.Tensor:
        """Torch path: rows sorted by local expert, counts_e[i] rows for expert i, each row's output scaled by its
        routing weight w_R (None: 1) -> [R, D] (one autograd Function writing outputs and gradients in place:
        sorted_mlp.py)."""
        if not any(counts_e):
            return self.no_rows(x_RD, w_R)
        return sorted_swiglu(x_RD, self.w1, self.w3, self.w2, counts_e, w_R)

    def no_rows(self, x_RD: torch.Tensor, w_R: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Result for a rank whose experts received no rows: still attached to x, the routing weights and the
        expert weights, so this rank joins the backward all-to-alls like its peers (and its expert grads are
        zeros, not None)."""
        zero = (self.w1.sum() + self.w3.sum() + self.w2.sum()) * 0.0
        if w_R is not None:
            zero = zero + w_R.sum() * 0.0
        return x_RD * 0.0 + zero

    def kernel_rows(self, x_RD: torch.Tensor, w_R: torch.Tensor, counts_e: Sequence[int]) -> torch.Tensor:
        """Kernel path on rows sorted by local expert, each row its own token of weight w_R."""
        import moe_kernels

        R = x_RD.shape[0]
        if R == 0:
            return self.no_rows(x_RD, w_R)
        counts = torch.tensor(list(counts_e), device=x_RD.device)
        expert_R1 = torch.repeat_interleave(torch.arange(len(counts_e), device=x_RD.device), counts,
                                            output_size=R)[:, None]
        return moe_kernels.moe_mlp(x_RD, w_R.float()[:, None], expert_R1, self.w1, self.w3, self.w2)

    def fused_tokens(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, indices_TK: torch.Tensor) -> torch.Tensor:
        """Kernel path when every expert is local (EP = ETP = 1): route, compute and combine in one call;
        indices outside [0, E) (dropped assignments) contribute nothing."""
        import moe_kernels

        return moe_kernels.moe_mlp(x_TD, weights_TK, indices_TK, self.w1, self.w3, self.w2)

