"""Routed experts: stacked SwiGLU weights of this rank's experts, and the expert computation.

Legend: R rows (token copies at this rank's experts), D hidden, E experts, e local experts (E / ep),
F_l local expert FFN width (F / etp), K top-k.

    w1 (gate) [e, F_l, D]   w3 (up) [e, F_l, D]   w2 (down) [e, D, F_l]     (canonical: experts.w1 [E, F, D] ...)
    expert(x) = w2 @ (silu(w1 @ x) * (w3 @ x))

Splits: experts over EP (dim 0), the F dim over ETP; every expert parameter is `is_expert`.
Torch path: rows arrive sorted by local expert; one matmul triple per non-empty expert on a contiguous slice.
(`torch._grouped_mm` exists in torch 2.13 but its CPU backward fails for these layouts, so it is not used.)
Kernel path: `moe_kernels.moe_mlp` (Triton on CUDA).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...parallel import ParallelState
from ..sharding import Split, declare


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

    def sorted_rows(self, x_RD: torch.Tensor, counts_e: Sequence[int]) -> torch.Tensor:
        """Torch path: rows sorted by local expert, counts_e[i] rows for expert i -> expert outputs [R, D].
        (Measured on CPU: this autograd loop is compute-bound; a hand-written backward and a fused gate|up matmul
        were both slower.)"""
        outs, start = [], 0
        # unbind once: indexing w[i] per expert makes autograd allocate a full-size zero grad per expert
        w1_FD, w3_FD, w2_DF = self.w1.unbind(0), self.w3.unbind(0), self.w2.unbind(0)
        for i, n in enumerate(counts_e):
            if n == 0:
                continue
            x_nD = x_RD[start:start + n]
            h_nF = F.silu(x_nD @ w1_FD[i].t()) * (x_nD @ w3_FD[i].t())
            outs.append(h_nF @ w2_DF[i].t())
            start += n
        if not outs:
            return self.no_rows(x_RD)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def no_rows(self, x_RD: torch.Tensor) -> torch.Tensor:
        """Result for a rank whose experts received no rows: still attached to x and the weights, so this rank
        joins the backward all-to-alls like its peers (and its expert grads are zeros, not None)."""
        zero = (self.w1.sum() + self.w3.sum() + self.w2.sum()) * 0.0
        return x_RD * 0.0 + zero

    def kernel_rows(self, x_RD: torch.Tensor, counts_e: Sequence[int]) -> torch.Tensor:
        """Kernel path on rows sorted by local expert (weight 1 per row; routing weights applied at combine)."""
        import moe_kernels

        R = x_RD.shape[0]
        if R == 0:
            return self.no_rows(x_RD)
        counts = torch.tensor(list(counts_e), device=x_RD.device)
        expert_R1 = torch.repeat_interleave(torch.arange(len(counts_e), device=x_RD.device), counts,
                                            output_size=R)[:, None]
        ones_R1 = torch.ones(R, 1, dtype=torch.float32, device=x_RD.device)
        return moe_kernels.moe_mlp(x_RD, ones_R1, expert_R1, self.w1, self.w3, self.w2)

    def fused_tokens(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, indices_TK: torch.Tensor) -> torch.Tensor:
        """Kernel path when every expert is local (EP = ETP = 1): route, compute and combine in one call;
        indices outside [0, E) (dropped assignments) contribute nothing."""
        import moe_kernels

        return moe_kernels.moe_mlp(x_TD, weights_TK, indices_TK, self.w1, self.w3, self.w2)

