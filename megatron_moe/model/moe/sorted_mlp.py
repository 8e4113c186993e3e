"""The experts' SwiGLU on rows sorted by expert, as one autograd Function over the stacked weights (torch path).

Legend: R rows (sorted by local expert, counts_e[i] rows for expert i), D hidden, e local experts, F expert FFN
(this rank's slice), n rows of one expert.

    y_RD = sorted_swiglu(x_RD, w1_eFD, w3_eFD, w2_eDF, counts_e, weights_R)
    expert i on its rows:  y_nD = (weights_n * silu(x_nD @ w1[i]ᵀ) * (x_nD @ w3[i]ᵀ)) @ w2[i]ᵀ

Same matmuls as a loop of per-expert autograd ops, but every result is written where it belongs: the forward
into one [R, F] pair of buffers and one [R, D] output, the backward into one [R, D] input gradient and one
[e, F, D] / [e, D, F] gradient per weight, each expert's block written in place (`mm(out=)`). The plain
autograd loop over `w.unbind(0)` instead built 2·e per-expert weight gradients, then `stack`ed each matrix's
into a new tensor (plus a `cat` of the outputs and a sum of per-slice input gradients), which cost 17% of the
layer at LLaMA-2-7B shapes (issue #26). Experts with no rows get exact zero gradients.

The routing weight of each row (optional) scales the [n, F] activation before the down projection, which is
the same as scaling the [n, D] output (the projection is linear) at F/D of the memory traffic; its gradient is
the row-wise dot product of dL/d(h) and h, also on [n, F]. Weighting the [R, D] output outside instead cost a
pass over it forward, two in backward, and kept the unweighted output for the weight's gradient.

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
        h1_RF = x_RD.new_empty(R, F_)
        h3_RF = x_RD.new_empty(R, F_)
        y_RD = x_RD.new_empty(R, w2_eDF.shape[1])
        for i, a, b in _spans(counts):
            x_nD = x_RD[a:b]
            torch.mm(x_nD, w1_eFD[i].t(), out=h1_RF[a:b])
            torch.mm(x_nD, w3_eFD[i].t(), out=h3_RF[a:b])
            h_nF = F.silu(h1_RF[a:b]) * h3_RF[a:b]
            if weights_R is not None:
                h_nF *= weights_R[a:b, None]
            torch.mm(h_nF, w2_eDF[i].t(), out=y_RD[a:b])
        need_x, need_w1, need_w3 = ctx.needs_input_grad[:3]
        ctx.save_for_backward(x_RD if need_w1 or need_w3 else None, w1_eFD if need_x else None,
                              w3_eFD if need_x else None, w2_eDF, h1_RF, h3_RF, weights_R)
        ctx.counts, ctx.shapes = counts, (w1_eFD.shape, w3_eFD.shape, w2_eDF.shape)
        return y_RD

    @staticmethod
    def backward(ctx, dy_RD):
        x_RD, w1_eFD, w3_eFD, w2_eDF, h1_RF, h3_RF, weights_R = ctx.saved_tensors
        need_x, need_w1, need_w3, need_w2, _, need_r = ctx.needs_input_grad
        need_h = need_x or need_w1 or need_w3
        with torch.autocast(dy_RD.device.type, enabled=False):
            dy_RD = dy_RD.to(h1_RF.dtype).contiguous()
            dx_RD = torch.empty_like(dy_RD) if need_x else None
            dr_R = torch.zeros_like(weights_R) if need_r else None
            dw1, dw3, dw2 = (_grad_buffer(shape, dy_RD, ctx.counts) if need else None
                             for shape, need in zip(ctx.shapes, (need_w1, need_w3, need_w2)))
            for i, a, b in _spans(ctx.counts):
                dy_nD, h1_nF, h3_nF = dy_RD[a:b], h1_RF[a:b], h3_RF[a:b]
                r_n1 = weights_R[a:b, None] if weights_R is not None else None
                silu_nF = F.silu(h1_nF)
                h_nF = silu_nF * h3_nF                  # unweighted
                dh_nF = dy_nD @ w2_eDF[i] if (need_h or need_r) else None
                if need_r:
                    torch.sum(dh_nF * h_nF, dim=1, out=dr_R[a:b])
                if need_w2:
                    torch.mm(dy_nD.t(), h_nF if r_n1 is None else h_nF.mul_(r_n1), out=dw2[i])
                if not need_h:
                    continue
                if r_n1 is not None:
                    dh_nF.mul_(r_n1)                    # dL/d(unweighted h)
                dh3_nF = dh_nF * silu_nF
                dh1_nF = torch.ops.aten.silu_backward(dh_nF * h3_nF, h1_nF)
                if need_w1:
                    torch.mm(dh1_nF.t(), x_RD[a:b], out=dw1[i])
                if need_w3:
                    torch.mm(dh3_nF.t(), x_RD[a:b], out=dw3[i])
                if need_x:
                    torch.mm(dh1_nF, w1_eFD[i], out=dx_RD[a:b]).addmm_(dh3_nF, w3_eFD[i])
        return dx_RD, dw1, dw3, dw2, None, dr_R


def _grad_buffer(shape, like: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Uninitialised weight gradient; the blocks of experts without rows are zeroed (the others get written)."""
    g = like.new_empty(shape)
    for i, n in enumerate(counts):
        if n == 0:
            g[i].zero_()
    return g
