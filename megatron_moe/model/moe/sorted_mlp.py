"""The experts' SwiGLU on rows sorted by expert, as one autograd Function over the stacked weights (torch path).

Legend: R rows (sorted by local expert, counts_e[i] rows for expert i), D hidden, e local experts, F expert FFN
(this rank's slice), n rows of one expert.

    y_RD = sorted_swiglu(x_RD, w1_eFD, w3_eFD, w2_eDF, counts_e, weights_R)
    expert i on its rows:  y_nD = (weights_n * silu(x_nD @ w1[i]ᵀ) * (x_nD @ w3[i]ᵀ)) @ w2[i]ᵀ

Same matmuls as a loop of per-expert autograd ops, but every result is written where it belongs: each expert's
matmul into its block of one [R, F] / [R, D] buffer, or of one [e, F, D] / [e, D, F] gradient per weight
(`mm(out=)`), and the elementwise SwiGLU work runs once over all R rows instead of once per expert (small
per-expert ops cost 3-4x more on 2 busy CPU cores). The plain autograd loop over `w.unbind(0)` instead built
2·e per-expert weight gradients and then `stack`ed each matrix's into a new tensor (plus a `cat` of the outputs
and a sum of per-slice input gradients), which cost 17% of the layer at LLaMA-2-7B shapes (issue #26). Experts
with no rows get exact zero gradients.

The routing weight of each row (optional) scales the [n, F] activation before the down projection, which is
the same as scaling the [n, D] output (the projection is linear) at F/D of the memory traffic; its gradient is
the row-wise dot product of dL/d(h) and h, also on [n, F]. Weighting the [R, D] output outside instead cost a
pass over it forward, two in backward, and kept the unweighted output for the weight's gradient.

On CPU, the forward matmuls `x @ wᵀ` with a weight of ≥ 2·W_BLOCK rows (Mixtral's 14336-row w1/w3, the 4096-row
w2) run in blocks of W_BLOCK weight rows, each written into its columns of the output: MKL's sgemm for a few dozen
rows against a whole 14336 × 4096 weight ran 1.1–1.4× slower than the same products in 512-row blocks (fp32, 1 and
2 threads, 32–512 rows; bitwise the same result; docs/benchmarks.md). The backward matmuls gained nothing from
blocking and are left whole.

Saved for backward: silu's input h1 and the up projection h3 (silu(h1) * h3 is recomputed), x when a weight
needs its gradient, the routing weights, and references to the weights; the autograd loop also kept silu(h1)
and the product. The elementwise derivative is aten's own `silu_backward`, as autograd uses.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def sorted_swiglu(x_RD: torch.Tensor, w1_eFD: torch.Tensor, w3_eFD: torch.Tensor, w2_eDF: torch.Tensor,
                  counts_e: Sequence[int], weights_R: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Expert outputs [R, D] for rows sorted by expert, each scaled by its weight (weights_R [R], any float
    dtype; None: 1); sum(counts_e) must be R.

    Compute dtype: x's, or under autocast the autocast dtype (the inputs are cast first, as autocast casts each
    matmul's operands, and the Function runs with autocast off, since `mm(out=)` does not autocast)."""
    counts = [int(n) for n in counts_e]
    if len(counts) != w1_eFD.shape[0] or sum(counts) != x_RD.shape[0]:
        raise ValueError(f"sorted_swiglu: counts {counts} (sum {sum(counts)}) do not match {x_RD.shape[0]} rows "
                         f"and {w1_eFD.shape[0]} experts")
    if weights_R is not None and tuple(weights_R.shape) != (x_RD.shape[0],):
        raise ValueError(f"sorted_swiglu: weights of shape {tuple(weights_R.shape)} for {x_RD.shape[0]} rows")
    device = x_RD.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x_RD, w1_eFD, w3_eFD, w2_eDF = (t.to(dtype) for t in (x_RD, w1_eFD, w3_eFD, w2_eDF))
    if weights_R is not None:
        weights_R = weights_R.to(x_RD.dtype)
    with torch.autocast(device, enabled=False):
        return _SortedSwiGLU.apply(x_RD, w1_eFD, w3_eFD, w2_eDF, counts, weights_R)


def _spans(counts: Sequence[int]):
    """(expert, first row, end row) of every expert with rows."""
    start = 0
    for i, n in enumerate(counts):
        if n:
            yield i, start, start + n
        start += n


class _SortedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_RD, w1_eFD, w3_eFD, w2_eDF, counts, weights_R):
        R, F_ = x_RD.shape[0], w1_eFD.shape[1]
        x_RD = x_RD.contiguous()
        spans = list(_spans(counts))
        h1_RF = x_RD.new_empty(R, F_)
        h3_RF = x_RD.new_empty(R, F_)
        for i, a, b in spans:
            _mm_wT(x_RD[a:b], w1_eFD[i], h1_RF[a:b])
            _mm_wT(x_RD[a:b], w3_eFD[i], h3_RF[a:b])
        h_RF = F.silu(h1_RF).mul_(h3_RF)
        if weights_R is not None:
            h_RF.mul_(weights_R[:, None])
        y_RD = x_RD.new_empty(R, w2_eDF.shape[1])
        for i, a, b in spans:
            _mm_wT(h_RF[a:b], w2_eDF[i], y_RD[a:b])
        need_x, need_w1, need_w3 = ctx.needs_input_grad[:3]
        ctx.save_for_backward(x_RD if need_w1 or need_w3 else None, w1_eFD if need_x else None,
                              w3_eFD if need_x else None, w2_eDF, h1_RF, h3_RF, weights_R)
        ctx.spans, ctx.shapes = spans, (w1_eFD.shape, w3_eFD.shape, w2_eDF.shape)
        return y_RD

    @staticmethod
    def backward(ctx, dy_RD):
        x_RD, w1_eFD, w3_eFD, w2_eDF, h1_RF, h3_RF, weights_R = ctx.saved_tensors
        need_x, need_w1, need_w3, need_w2, _, need_r = ctx.needs_input_grad
        need_h = need_x or need_w1 or need_w3
        spans = ctx.spans
        with torch.autocast(dy_RD.device.type, enabled=False):
            dy_RD = dy_RD.to(h1_RF.dtype).contiguous()
            r_R1 = weights_R[:, None] if weights_R is not None else None
            silu_RF = F.silu(h1_RF)
            h_RF = silu_RF * h3_RF                          # unweighted
            dr_R = dh_RF = None
            if need_h or need_r:                           # dL/d(weighted h), then of the unweighted h
                dh_RF = torch.empty_like(h_RF)
                for i, a, b in spans:
                    torch.mm(dy_RD[a:b], w2_eDF[i], out=dh_RF[a:b])
                if need_r:
                    dr_R = (dh_RF * h_RF).sum(dim=1)
                if r_R1 is not None:
                    dh_RF.mul_(r_R1)
            dw2 = dw1 = dw3 = dx_RD = None
            if need_w2:
                hw_RF = h_RF if r_R1 is None else h_RF.mul_(r_R1)
                dw2 = _grad_buffer(ctx.shapes[2], dy_RD, spans)
                for i, a, b in spans:
                    torch.mm(dy_RD[a:b].t(), hw_RF[a:b], out=dw2[i])
            if need_h:
                dh3_RF = dh_RF * silu_RF
                dh1_RF = torch.ops.aten.silu_backward(dh_RF.mul_(h3_RF), h1_RF)
                if need_w1:
                    dw1 = _grad_buffer(ctx.shapes[0], dy_RD, spans)
                    for i, a, b in spans:
                        torch.mm(dh1_RF[a:b].t(), x_RD[a:b], out=dw1[i])
                if need_w3:
                    dw3 = _grad_buffer(ctx.shapes[1], dy_RD, spans)
                    for i, a, b in spans:
                        torch.mm(dh3_RF[a:b].t(), x_RD[a:b], out=dw3[i])
                if need_x:
                    dx_RD = torch.empty_like(dy_RD)
                    for i, a, b in spans:
                        torch.mm(dh1_RF[a:b], w1_eFD[i], out=dx_RD[a:b]).addmm_(dh3_RF[a:b], w3_eFD[i])
        return dx_RD, dw1, dw3, dw2, None, dr_R


W_BLOCK = 512
"""Rows of a weight per forward matmul on CPU (module docstring); 512 was as fast as or faster than 1024 and 2048."""


def _mm_wT(x_nK: torch.Tensor, w_NK: torch.Tensor, out_nN: torch.Tensor) -> None:
    """out_nN = x_nK @ w_NKᵀ; on CPU in blocks of W_BLOCK rows of w when it has at least two blocks of them."""
    N = w_NK.shape[0]
    if x_nK.device.type != "cpu" or N < 2 * W_BLOCK:
        torch.mm(x_nK, w_NK.t(), out=out_nN)
        return
    for c in range(0, N, W_BLOCK):
        torch.mm(x_nK, w_NK[c:c + W_BLOCK].t(), out=out_nN[:, c:c + W_BLOCK])


def _grad_buffer(shape, like: torch.Tensor, spans) -> torch.Tensor:
    """Uninitialised weight gradient; the blocks of experts without rows are zeroed (the others get written)."""
    g = like.new_empty(shape)
    filled = {i for i, _, _ in spans}
    for i in range(shape[0]):
        if i not in filled:
            g[i].zero_()
    return g
