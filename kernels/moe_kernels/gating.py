"""Triton top-k gating: one pass over the logits, fp32 math, k rounds of argmax, no host sync.

Shape legend: T tokens, E experts, K top-k. Each program owns BLOCK_T rows with all E columns in
registers. Selection score as in reference.select_topk; ties go to the lower expert index (tl.argmax
returns the first maximal index; masked-out experts are set to -inf). Expert counts use integer atomics
(order-independent); the per-expert probability sums are written as per-program partials and reduced
in a fixed order, so every output is deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from .reference import check_gating_args


@triton.jit
def _nonzero(d):
    """Denominator guard for masked rows (which are never stored)."""
    return tl.where(d != 0.0, d, 1.0)


@triton.jit
def _scores(l, cmask, SIGMOID: tl.constexpr):
    """Returns (gate scores, router probabilities over E), both fp32, zero on masked columns."""
    if SIGMOID:
        s = tl.where(cmask, tl.sigmoid(l), 0.0)
        p = s / _nonzero(tl.sum(s, axis=1))[:, None]
    else:
        m = tl.max(l, axis=1)
        ex = tl.where(cmask, tl.exp(l - m[:, None]), 0.0)
        s = ex / _nonzero(tl.sum(ex, axis=1))[:, None]
        p = s
    return s, p


@triton.jit
def _row_block(l_ptr, T, E, s_lt, SIGMOID: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """The gating kernels' prologue: this program's rows (int64) and columns with their masks, the fp32 logits
    (0 where masked) and their scores and probabilities (`_scores`)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    rmask = rows < T
    cmask = (cols < E)[None, :] & rmask[:, None]
    l = tl.load(l_ptr + rows[:, None] * s_lt + cols[None, :], mask=cmask, other=0.0).to(tl.float32)
    s, p = _scores(l, cmask, SIGMOID)
    return pid, rows, cols, rmask, cmask, s, p, l


@triton.jit
def gating_fwd_kernel(l_ptr, b_ptr, w_ptr, i_ptr, cnt_ptr, ps_ptr, T, E, s_lt, scale,
                      KTOP: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr,
                      WANT_PSUM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                      KPAD: tl.constexpr):
    pid, rows, cols, rmask, cmask, s, p, l = _row_block(l_ptr, T, E, s_lt, SIGMOID, BLOCK_T, BLOCK_E)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=cols < E, other=0.0).to(tl.float32)
        sel = s + bias[None, :]
    elif SIGMOID:
        sel = s
    else:
        sel = l
    sel = tl.where(cmask, sel, float("-inf"))
    total = tl.zeros((BLOCK_T,), dtype=tl.float32)
    kcols = tl.arange(0, KPAD)
    w_k = tl.zeros((BLOCK_T, KPAD), dtype=tl.float32)
    i_k = tl.zeros((BLOCK_T, KPAD), dtype=tl.int64)
    for j in tl.static_range(KTOP):
        a = tl.argmax(sel, axis=1)
        hit = cols[None, :] == a[:, None]
        v = tl.sum(tl.where(hit, s, 0.0), axis=1)
        total += v
        sel = tl.where(hit, float("-inf"), sel)
        w_k = tl.where(kcols[None, :] == j, v[:, None], w_k)
        i_k = tl.where(kcols[None, :] == j, a.to(tl.int64)[:, None], i_k)
        tl.atomic_add(cnt_ptr + a, tl.full((BLOCK_T,), 1, tl.int32), mask=rmask)
    if SIGMOID and KTOP == 1:
        norm = tl.full((BLOCK_T,), 1.0, tl.float32) * scale
    else:
        norm = scale / _nonzero(total)
    out_off = rows[:, None] * KTOP + kcols[None, :]
    out_ok = rmask[:, None] & (kcols < KTOP)[None, :]
    tl.store(w_ptr + out_off, w_k * norm[:, None], mask=out_ok)
    tl.store(i_ptr + out_off, i_k, mask=out_ok)
    if WANT_PSUM:
        tl.store(ps_ptr + pid.to(tl.int64) * BLOCK_E + cols, tl.sum(tl.where(cmask, p, 0.0), axis=0))


@triton.jit
def gating_bwd_kernel(l_ptr, i_ptr, g_ptr, gp_ptr, dl_ptr, T, E, s_lt, scale,
                      KTOP: tl.constexpr, SIGMOID: tl.constexpr, HAS_GW: tl.constexpr, HAS_GP: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    pid, rows, cols, rmask, cmask, s, p, l = _row_block(l_ptr, T, E, s_lt, SIGMOID, BLOCK_T, BLOCK_E)
    dl = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    if HAS_GW:
        # Pass 1: total (sum of selected scores) and sum_j q_j g_j.
        total = tl.zeros((BLOCK_T,), dtype=tl.float32)
        gdot = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for j in tl.static_range(KTOP):
            a = tl.load(i_ptr + rows * KTOP + j, mask=rmask, other=0)
            g = tl.load(g_ptr + rows * KTOP + j, mask=rmask, other=0.0).to(tl.float32)
            v = tl.sum(tl.where(cols[None, :] == a[:, None], s, 0.0), axis=1)
            total += v
            gdot += v * g
        total = _nonzero(total)
        gdot = gdot / total
        # Pass 2: scatter d(logit) of each selected expert into its column (distinct within a row).
        for j in tl.static_range(KTOP):
            a = tl.load(i_ptr + rows * KTOP + j, mask=rmask, other=0)
            g = tl.load(g_ptr + rows * KTOP + j, mask=rmask, other=0.0).to(tl.float32)
            hit = cols[None, :] == a[:, None]
            v = tl.sum(tl.where(hit, s, 0.0), axis=1)
            if SIGMOID:
                if KTOP == 1:
                    ds = scale * g
                else:
                    ds = scale / total * (g - gdot)
                d = ds * v * (1.0 - v)
            else:
                q = v / total
                d = scale * q * (g - gdot)
            dl += tl.where(hit, d[:, None], 0.0)
    if HAS_GP:
        gp = tl.load(gp_ptr + cols, mask=cols < E, other=0.0).to(tl.float32)
        pg = tl.sum(p * gp[None, :], axis=1)
        if SIGMOID:
            ssum = tl.sum(s, axis=1)
            ds = (gp[None, :] - pg[:, None]) / _nonzero(ssum)[:, None]
            dl += tl.where(cmask, ds * s * (1.0 - s), 0.0)
        else:
            dl += tl.where(cmask, p * (gp[None, :] - pg[:, None]), 0.0)
    tl.store(dl_ptr + rows[:, None] * E + cols[None, :], dl.to(dl_ptr.dtype.element_ty), mask=cmask)


def _block_t(E: int) -> int:
    return max(1, min(64, 2048 // triton.next_power_of_2(E)))


class TritonGating(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_TE, bias_E, k, score_function, scale, want_psum):
        logits_TE = logits_TE.contiguous()
        T, E = logits_TE.shape
        dev = logits_TE.device
        BE, BT = triton.next_power_of_2(E), _block_t(E)
        nprog = triton.cdiv(T, BT)
        w_TK = torch.empty(T, k, dtype=torch.float32, device=dev)
        idx_TK = torch.empty(T, k, dtype=torch.int64, device=dev)
        cnt_E = torch.zeros(E, dtype=torch.int32, device=dev)  # initialised: atomics add into it
        ps = torch.empty(nprog if want_psum else 1, BE, dtype=torch.float32, device=dev)
        bias = bias_E.contiguous() if bias_E is not None else w_TK
        launch(gating_fwd_kernel, (nprog,), logits_TE, bias, w_TK, idx_TK, cnt_E, ps, T, E, logits_TE.stride(0),
               float(scale), KTOP=k, SIGMOID=score_function == "sigmoid", HAS_BIAS=bias_E is not None,
               WANT_PSUM=want_psum, BLOCK_T=BT, BLOCK_E=BE, KPAD=triton.next_power_of_2(k))
        psum_E = ps.sum(0)[:E] if want_psum else None
        ctx.save_for_backward(logits_TE, idx_TK)
        ctx.k, ctx.sig, ctx.scale = k, score_function == "sigmoid", float(scale)
        ctx.mark_non_differentiable(idx_TK)
        cnt_E = cnt_E.long()
        ctx.mark_non_differentiable(cnt_E)
        return w_TK, idx_TK, cnt_E, psum_E

    @staticmethod
    def backward(ctx, g_w_TK, _g_idx, _g_cnt, g_psum_E):
        logits_TE, idx_TK = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        T, E = logits_TE.shape
        BE, BT = triton.next_power_of_2(E), _block_t(E)
        dl_TE = torch.empty_like(logits_TE)
        gw = g_w_TK.contiguous() if g_w_TK is not None else logits_TE
        gp = g_psum_E.contiguous() if g_psum_E is not None else logits_TE
        launch(gating_bwd_kernel, (triton.cdiv(T, BT),), logits_TE, idx_TK, gw, gp, dl_TE, T, E,
               logits_TE.stride(0), ctx.scale, KTOP=ctx.k, SIGMOID=ctx.sig, HAS_GW=g_w_TK is not None,
               HAS_GP=g_psum_E is not None, BLOCK_T=BT, BLOCK_E=BE)
        return dl_TE, None, None, None, None, None


def topk_gating_triton(logits, k, score_function="softmax", bias=None, scale=1.0, return_probs_sum=False):
    check_gating_args(logits, k, score_function, bias)
    w, idx, cnt, psum = TritonGating.apply(logits, bias, k, score_function, float(scale), return_probs_sum)
    return (w, idx, cnt, psum) if return_probs_sum else (w, idx, cnt)
