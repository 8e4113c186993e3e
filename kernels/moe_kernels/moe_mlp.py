"""Triton path of the grouped SwiGLU expert MLP: launches and the autograd Function.

Shape legend: T tokens, D hidden, F expert FFN, E experts, K top-k, P = T*K pairs, R padded rows.

Forward:  align pairs (device) -> up_kernel: h_RF = silu(x[tok] w1^T) * (x[tok] w3^T)
          -> rowgemm(down): y_PD[pair] = weight * h w2^T -> combine over k (fixed order) -> y_TD.
Backward: dh_kernel: g = dy[tok] w2, d(weight) partials = rowsum(g*h), dh1/dh3 via SwiGLU'
          -> rowgemm(dX): dx_PD = dh1 w1 + dh3 w3 -> combine over k;
          dw_kernel: dW1[e] = dh1^T x[tok], dW3[e] = dh3^T x[tok], dW2[e] = (weight*dy[tok])^T h.
No float atomics; every output element is written by exactly one program.
"""
from __future__ import annotations

import torch

from . import _configs as C_
from . import _mlp_kernels as K_
from ._align import align_pairs
from ._launch import INTERP, Tuned, launch, target_of
from .reference import check_mlp_args

_UP = Tuned(K_.up_kernel, ["D", "F", "BLOCK_M", "SAVE"])
_ROW = Tuned(K_.rowgemm_kernel, ["N", "KDIM", "BLOCK_M", "TWO"])
_DH = Tuned(K_.dh_kernel, ["D", "F", "BLOCK_M"])
_DW = Tuned(K_.dw_kernel, ["N", "M", "A_GATHER", "B_GATHER"])


def _flags(dtype, target):
    interpret = target is INTERP
    upcast = interpret and dtype == torch.bfloat16  # the interpreter's bf16 dot is wrong
    prec = "ieee" if (dtype == torch.float32 or interpret) else "tf32"  # tf32 is ignored for 16-bit inputs
    return upcast, prec


def _cdiv(a, b):
    return -(-a // b)


def _combine(src_PN, idx_TK, T, N, E, dtype):
    out = torch.empty(T, N, dtype=dtype, device=src_PN.device)
    grid = (_cdiv(T, 16), _cdiv(N, 128))
    launch(K_.combine_kernel, grid, src_PN, idx_TK, out, T, N, E, KTOP=idx_TK.shape[1], BLOCK_T=16, BLOCK_N=128)
    return out


class TritonMoEMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, w_TK, idx_TK, w1_EFD, w3_EFD, w2_EDF, target):
        x_TD = x_TD.contiguous()
        w1_EFD, w3_EFD, w2_EDF = w1_EFD.contiguous(), w3_EFD.contiguous(), w2_EDF.contiguous()
        idx_TK = idx_TK.long().contiguous()
        wflat_P = w_TK.float().contiguous().reshape(-1)
        T, D = x_TD.shape
        KT = idx_TK.shape[1]
        E, F, _ = w1_EFD.shape
        P = T * KT
        dev, dt = x_TD.device, x_TD.dtype
        aligned_DF = C_.aligned(D, F)
        bm = C_.pick_block_m(P, E, target, dt, aligned_DF)
        al = align_pairs(idx_TK, E, bm)
        R, nb = al.num_rows, al.num_rows // bm
        upcast, prec = _flags(dt, target)
        save = any(ctx.needs_input_grad[:6])
        h_RF = torch.empty(R, F, dtype=dt, device=dev)
        h1_RF = torch.empty(R, F, dtype=dt, device=dev) if save else h_RF
        h3_RF = torch.empty(R, F, dtype=dt, device=dev) if save else h_RF
        gm = C_.group_m(target)
        _UP(lambda m: (nb * _cdiv(F, m["BLOCK_N"]),), target, C_.configs("up", target, dt, bm, aligned_DF),
            x_TD, w1_EFD, w3_EFD, h_RF, h1_RF, h3_RF, al.sorted_ids_R, al.block_expert_B,
            P, D, F, KT, nb, x_TD.stride(0), w1_EFD.stride(0), w1_EFD.stride(1), w1_EFD.stride(2),
            SAVE=save, BLOCK_M=bm, GROUP_M=gm, UPCAST=upcast, PREC=prec)
        y_PD = torch.empty(P, D, dtype=dt, device=dev)
        _ROW(lambda m: (nb * _cdiv(D, m["BLOCK_N"]),), target, C_.configs("down", target, dt, bm, aligned_DF),
             h_RF, w2_EDF, y_PD, w2_EDF, h_RF, wflat_P, al.sorted_ids_R, al.block_expert_B,
             P, D, F, KT, nb, F, w2_EDF.stride(0), w2_EDF.stride(1), w2_EDF.stride(2), D,
             A_GATHER=False, TWO=False, SCALE=True, BLOCK_M=bm, GROUP_M=gm, UPCAST=upcast, PREC=prec)
        y_TD = _combine(y_PD, idx_TK, T, D, E, dt)
        if save:
            ctx.save_for_backward(x_TD, w_TK, idx_TK, wflat_P, w1_EFD, w3_EFD, w2_EDF, h_RF, h1_RF, h3_RF,
                                  al.sorted_ids_R, al.block_expert_B, al.pad_off_E, al.pad_cnt_E)
            ctx.meta = (bm, target, aligned_DF)
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        (x_TD, w_TK, idx_TK, wflat_P, w1_EFD, w3_EFD, w2_EDF, h_RF, h1_RF, h3_RF,
         ids_R, bexp_B, pad_off_E, pad_cnt_E) = ctx.saved_tensors
        bm, target, aligned_DF = ctx.meta
        need_x, need_w, _, need_w1, need_w3, need_w2 = ctx.needs_input_grad[:6]
        dy_TD = dy_TD.to(x_TD.dtype).contiguous()
        T, D = x_TD.shape
        KT = idx_TK.shape[1]
        E, F, _ = w1_EFD.shape
        P, R = T * KT, ids_R.numel()
        nb = R // bm
        dev, dt = x_TD.device, x_TD.dtype
        upcast, prec = _flags(dt, target)
        dh1_RF = torch.empty(R, F, dtype=dt, device=dev)
        dh3_RF = torch.empty(R, F, dtype=dt, device=dev)
        dh_cfgs = C_.configs("dh", target, dt, bm, aligned_DF)
        slots = C_.max_ftiles(F, dh_cfgs)  # d(weight) partials: every config writes all slots (zeros past its tiles)
        dwp_SR = torch.empty(slots, R, dtype=torch.float32, device=dev)
        gm = C_.group_m(target)
        _DH(lambda m: (nb * _cdiv(F, m["BLOCK_N"]),), target, dh_cfgs,
            dy_TD, w2_EDF, h1_RF, h3_RF, wflat_P, dh1_RF, dh3_RF, dwp_SR, ids_R, bexp_B,
            P, D, F, KT, R, slots, nb, dy_TD.stride(0), w2_EDF.stride(0), w2_EDF.stride(1), w2_EDF.stride(2),
            BLOCK_M=bm, GROUP_M=gm, UPCAST=upcast, PREC=prec)
        dx = dw = dw1 = dw3 = dw2 = None
        if need_w:
            dw_R = dwp_SR.sum(0)  # fixed-order reduction over the F tiles
            dw_ext = torch.zeros(P + 1, dtype=torch.float32, device=dev)
            dw_ext.scatter_(0, ids_R, dw_R)  # pair ids are distinct; padding rows (all 0.0) land on slot P
            dw = dw_ext[:P].view(T, KT).to(w_TK.dtype)
        if need_x:
            dx_PD = torch.empty(P, D, dtype=dt, device=dev)
            _ROW(lambda m: (nb * _cdiv(D, m["BLOCK_N"]),), target, C_.configs("dx", target, dt, bm, aligned_DF),
                 dh1_RF, w1_EFD, dx_PD, w3_EFD, dh3_RF, wflat_P, ids_R, bexp_B,
                 P, D, F, KT, nb, F, w1_EFD.stride(0), w1_EFD.stride(2), w1_EFD.stride(1), D,
                 A_GATHER=False, TWO=True, SCALE=False, BLOCK_M=bm, GROUP_M=gm, UPCAST=upcast, PREC=prec)
            dx = _combine(dx_PD, idx_TK, T, D, E, dt)
        dw_cfgs = C_.configs("dw", target, dt, bm, aligned_DF)

        def run_dw(a, b, out, N, M, a_gather, b_gather, a_scale):
            _DW(lambda m: (E, _cdiv(N, m["BLOCK_N"]), _cdiv(M, m["BLOCK_MO"])), target, dw_cfgs,
                a, b, out, wflat_P, ids_R, pad_off_E, pad_cnt_E, P, N, M, KT,
                a.stride(0), b.stride(0), out.stride(0), out.stride(1), out.stride(2),
                A_GATHER=a_gather, B_GATHER=b_gather, A_SCALE=a_scale, UPCAST=upcast, PREC=prec)
            return out

        if need_w1:
            dw1 = run_dw(dh1_RF, x_TD, torch.empty_like(w1_EFD), F, D, False, True, False)
        if need_w3:
            dw3 = run_dw(dh3_RF, x_TD, torch.empty_like(w3_EFD), F, D, False, True, False)
        if need_w2:
            dw2 = run_dw(dy_TD, h_RF, torch.empty_like(w2_EDF), D, F, True, False, True)
        return dx, dw, None, dw1, dw3, dw2, None


def moe_mlp_triton(x, weights, indices, w1, w3, w2, interpret=False):
    """Triton path; `interpret` runs the kernels in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    check_mlp_args(x, weights, indices, w1, w3, w2)
    return TritonMoEMLP.apply(x, weights, indices, w1, w3, w2, INTERP if interpret else target_of(x))
