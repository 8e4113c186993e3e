"""Pure-torch twins of the MoE kernels: the ground truth, and the model's CPU training path.

Shape legend: T tokens, D hidden, F expert FFN, E experts, K top-k, P = T*K (token, slot) pairs.

Both functions are autograd Functions with hand-written backwards that mirror the Triton path:
dX through the transposed weights, dW per expert accumulated in fp32 (explicit zeros for experts that
received no token), d(weights) as per-row dot products, and a fixed-order sum over K (no index_add /
scatter_add / float atomics anywhere), so results are deterministic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F_

__all__ = ["topk_gating", "moe_mlp", "select_topk", "router_probs"]

SCORE_FUNCTIONS = ("softmax", "sigmoid")


# ----------------------------------------------------------------------------------------------- gating
def router_probs(logits_TE: torch.Tensor, score_function: str) -> torch.Tensor:
    """Router probabilities over all E experts (fp32): softmax, or sigmoid scores normalised over E."""
    l_TE = logits_TE.float()
    if score_function == "softmax":
        return torch.softmax(l_TE, dim=-1)
    s_TE = torch.sigmoid(l_TE)
    return s_TE / s_TE.sum(-1, keepdim=True)


def select_topk(logits_TE: torch.Tensor, k: int, score_function: str, bias_E: torch.Tensor | None):
    """Expert choice (no grad): descending selection score, ties to the lower expert index.

    Selection score: logits (softmax, no bias: exact, monotone in the probabilities), softmax
    probabilities + bias (softmax with bias), sigmoid(logits) [+ bias] (sigmoid).
    Returns (indices_TK int64, scores_TE fp32) where scores are the unnormalised gate values.
    """
    l_TE = logits_TE.detach().float()
    if score_function == "softmax":
        scores_TE = torch.softmax(l_TE, dim=-1)
        sel_TE = l_TE if bias_E is None else scores_TE + bias_E.detach().float()
    else:
        scores_TE = torch.sigmoid(l_TE)
        sel_TE = scores_TE if bias_E is None else scores_TE + bias_E.detach().float()
    # A stable descending sort keeps equal values in index order: ties go to the lower expert index.
    order_TE = torch.sort(sel_TE, dim=-1, descending=True, stable=True).indices
    return order_TE[:, :k].contiguous(), scores_TE


class _GatingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_TE, bias_E, k, score_function, scale, want_psum):
        idx_TK, _ = select_topk(logits_TE, k, score_function, bias_E)
        l_TE = logits_TE.float()
        l_TK = l_TE.gather(1, idx_TK)
        if score_function == "softmax":
            q_TK = torch.softmax(l_TK, dim=-1)  # == full softmax renormalised over the k
        else:
            s_TK = torch.sigmoid(l_TK)
            q_TK = s_TK / s_TK.sum(-1, keepdim=True) if k > 1 else s_TK
        w_TK = q_TK * scale
        E = logits_TE.shape[1]
        counts_E = torch.zeros(E, dtype=torch.int64, device=logits_TE.device)
        counts_E.scatter_add_(0, idx_TK.reshape(-1), torch.ones_like(idx_TK.reshape(-1)))  # integer: exact
        psum_E = router_probs(logits_TE, score_function).sum(0) if want_psum else None
        ctx.save_for_backward(logits_TE, idx_TK)
        ctx.k, ctx.score_function, ctx.scale = k, score_function, scale
        ctx.mark_non_differentiable(idx_TK, counts_E)
        return w_TK, idx_TK, counts_E, psum_E

    @staticmethod
    def backward(ctx, g_w_TK, _g_idx, _g_counts, g_psum_E):
        logits_TE, idx_TK = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        l_TE = logits_TE.float()
        dl_TE = torch.zeros_like(l_TE)
        if g_w_TK is not None:
            g_TK = g_w_TK.float()
            l_TK = l_TE.gather(1, idx_TK)
            if ctx.score_function == "softmax":
                q_TK = torch.softmax(l_TK, dim=-1)
                dl_TK = ctx.scale * q_TK * (g_TK - (q_TK * g_TK).sum(-1, keepdim=True))
            else:
                s_TK = torch.sigmoid(l_TK)
                if ctx.k > 1:
                    S_T1 = s_TK.sum(-1, keepdim=True)
                    q_TK = s_TK / S_T1
                    ds_TK = ctx.scale / S_T1 * (g_TK - (q_TK * g_TK).sum(-1, keepdim=True))
                else:
                    ds_TK = ctx.scale * g_TK
                dl_TK = ds_TK * s_TK * (1 - s_TK)
            dl_TE.scatter_(1, idx_TK, dl_TK)  # indices within a row are distinct: a plain scatter
        if g_psum_E is not None:
            dP_1E = g_psum_E.float()[None, :]
            if ctx.score_function == "softmax":
                p_TE = torch.softmax(l_TE, dim=-1)
                dl_TE += p_TE * (dP_1E - (p_TE * dP_1E).sum(-1, keepdim=True))
            else:
                s_TE = torch.sigmoid(l_TE)
                S_T1 = s_TE.sum(-1, keepdim=True)
                r_TE = s_TE / S_T1
                ds_TE = (dP_1E - (r_TE * dP_1E).sum(-1, keepdim=True)) / S_T1
                dl_TE += ds_TE * s_TE * (1 - s_TE)
        return dl_TE.to(logits_TE.dtype), None, None, None, None, None


def check_gating_args(logits, k, score_function, bias):
    if logits.dim() != 2:
        raise ValueError(f"logits must be [T, E], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    E = logits.shape[1]
    if not isinstance(k, int) or not 1 <= k <= E:
        raise ValueError(f"k must be an int in [1, E={E}], got {k!r}")
    if score_function not in SCORE_FUNCTIONS:
        raise ValueError(f"score_function must be one of {SCORE_FUNCTIONS}, got {score_function!r}")
    if bias is not None and tuple(bias.shape) != (E,):
        raise ValueError(f"bias must have shape [E={E}], got {tuple(bias.shape)}")


def topk_gating(logits, k, score_function="softmax", bias=None, scale=1.0, return_probs_sum=False):
    """Top-k router (torch twin). See moe_kernels.topk_gating for the contract."""
    check_gating_args(logits, k, score_function, bias)
    w, idx, counts, psum = _GatingFn.apply(logits, bias, k, score_function, float(scale), return_probs_sum)
    return (w, idx, counts, psum) if return_probs_sum else (w, idx, counts)


# ----------------------------------------------------------------------------------------------- expert MLP
def sort_pairs_by_expert(indices_TK: torch.Tensor, E: int):
    """(order_P, counts_E): pair ids sorted by expert (stable; other-rank pairs dropped), tokens per expert."""
    key_P = indices_TK.reshape(-1)
    key_P = torch.where((key_P >= 0) & (key_P < E), key_P, torch.full_like(key_P, E))
    order_P = torch.argsort(key_P, stable=True)
    counts = torch.bincount(key_P, minlength=E + 1)[:E]
    return order_P, counts


class _MoEMLPFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, w_TK, idx_TK, w1_EFD, w3_EFD, w2_EDF):
        T, D = x_TD.shape
        K = idx_TK.shape[1]
        E = w1_EFD.shape[0]
        order_P, counts_E = sort_pairs_by_expert(idx_TK, E)
        ends = torch.cumsum(counts_E, 0).tolist()  # host sync: fine, this is the CPU path
        starts = [0] + ends[:-1]
        wflat_P = w_TK.reshape(-1).float()
        y_PD = torch.zeros(T * K, D, dtype=torch.float32, device=x_TD.device)
        keep = any(ctx.needs_input_grad)  # inference: do not hold the activations
        saved_h = []
        for e in range(E):
            if ends[e] == starts[e]:
                continue
            pairs = order_P[starts[e]:ends[e]]
            xe = x_TD[pairs // K]
            h1 = xe @ w1_EFD[e].t()
            h3 = xe @ w3_EFD[e].t()
            h = F_.silu(h1) * h3
            y_PD[pairs] = (h @ w2_EDF[e].t()).float() * wflat_P[pairs, None]  # each pair written once
            if keep:
                saved_h.append((h1, h3))
        y_TD = y_PD.view(T, K, D).sum(1).to(x_TD.dtype)  # fixed-order combine over k
        ctx.save_for_backward(x_TD, w_TK, idx_TK, w1_EFD, w3_EFD, w2_EDF, order_P)
        ctx.bounds, ctx.saved_h = (starts, ends), saved_h
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, w_TK, idx_TK, w1_EFD, w3_EFD, w2_EDF, order_P = ctx.saved_tensors
        starts, ends = ctx.bounds
        T, D = x_TD.shape
        K = idx_TK.shape[1]
        E = w1_EFD.shape[0]
        need_x, need_w, _, need_w1, need_w3, need_w2 = ctx.needs_input_grad
        dy_TD = dy_TD.to(x_TD.dtype)
        wflat_P = w_TK.reshape(-1).float()
        dx_PD = torch.zeros(T * K, D, dtype=torch.float32, device=x_TD.device) if need_x else None
        dw_P = torch.zeros(T * K, dtype=torch.float32, device=x_TD.device) if need_w else None
        dw1 = torch.zeros(w1_EFD.shape, dtype=torch.float32, device=x_TD.device) if need_w1 else None
        dw3 = torch.zeros(w3_EFD.shape, dtype=torch.float32, device=x_TD.device) if need_w3 else None
        dw2 = torch.zeros(w2_EDF.shape, dtype=torch.float32, device=x_TD.device) if need_w2 else None
        it = iter(ctx.saved_h)
        for e in range(E):
            if ends[e] == starts[e]:
                continue  # empty expert: its weight grads stay exactly zero
            h1, h3 = next(it)
            pairs = order_P[starts[e]:ends[e]]
            tok = pairs // K
            xe, g = x_TD[tok], dy_TD[tok]
            sig = torch.sigmoid(h1)
            silu = h1 * sig
            h = silu * h3
            gh = g @ w2_EDF[e]  # dL/dh before the routing weight: [n, F]
            if need_w:
                dw_P[pairs] = (gh.float() * h.float()).sum(-1)  # per-row dot product
            scale = wflat_P[pairs, None]
            if need_w2:
                dw2[e] = (g.float() * scale).t() @ h.float()
            dh = (gh.float() * scale)
            dh1 = (dh * h3.float() * sig.float() * (1 + h1.float() * (1 - sig.float())))
            dh3 = dh * silu.float()
            if need_w1:
                dw1[e] = dh1.t() @ xe.float()
            if need_w3:
                dw3[e] = dh3.t() @ xe.float()
            if need_x:
                dh1c, dh3c = dh1.to(x_TD.dtype), dh3.to(x_TD.dtype)
                dx_PD[pairs] = (dh1c @ w1_EFD[e] + dh3c @ w3_EFD[e]).float()
        ctx.saved_h = None
        dx = dx_PD.view(T, K, D).sum(1).to(x_TD.dtype) if need_x else None
        dw = dw_P.view(T, K).to(w_TK.dtype) if need_w else None
        return (dx, dw, None,
                dw1.to(w1_EFD.dtype) if need_w1 else None,
                dw3.to(w3_EFD.dtype) if need_w3 else None,
                dw2.to(w2_EDF.dtype) if need_w2 else None)


def check_mlp_args(x, weights, indices, w1, w3, w2):
    if x.dim() != 2:
        raise ValueError(f"x must be [T, D], got shape {tuple(x.shape)}")
    T, D = x.shape
    if weights.dim() != 2 or weights.shape[0] != T or tuple(indices.shape) != tuple(weights.shape):
        raise ValueError(f"weights and indices must both be [T={T}, K], got {tuple(weights.shape)} "
                         f"and {tuple(indices.shape)}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"indices must be int32 or int64, got {indices.dtype}")
    if w1.dim() != 3 or w1.shape[2] != D or w3.shape != w1.shape:
        raise ValueError(f"w1 and w3 must be [E, F, D={D}], got {tuple(w1.shape)} and {tuple(w3.shape)}")
    E, F, _ = w1.shape
    if tuple(w2.shape) != (E, D, F):
        raise ValueError(f"w2 must be [E={E}, D={D}, F={F}], got {tuple(w2.shape)}")
    if len({x.dtype, w1.dtype, w3.dtype, w2.dtype}) != 1:
        raise ValueError(f"x, w1, w3, w2 must share a dtype, got {x.dtype}, {w1.dtype}, {w3.dtype}, {w2.dtype}")


def moe_mlp(x, weights, indices, w1, w3, w2):
    """Grouped SwiGLU expert MLP (torch twin). See moe_kernels.moe_mlp for the contract."""
    check_mlp_args(x, weights, indices, w1, w3, w2)
    return _MoEMLPFn.apply(x, weights, indices.long(), w1, w3, w2)
