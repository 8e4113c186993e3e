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
import triton

from . import _mlp_kernels as K_
from ._align import align_pairs
from .reference import check_mlp_args

_CFG_GEMM = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
             for n, k, w, s in [(64, 64, 4, 4), (128, 64, 8, 3), (64, 128, 4, 3), (128, 32, 4, 4)]]
_CFG_DW = [triton.Config({"BLOCK_N": n, "BLOCK_MO": m, "BLOCK_R": r}, num_warps=w, num_stages=s)
           for n, m, r, w, s in [(64, 64, 64, 4, 4), (128, 64, 32, 8, 3), (128, 128, 32, 8, 3)]]


class _Launcher:
    """One fixed config under the interpreter (autotune with several configs fails there); a small
    autotuned space on GPU, keyed on the feature sizes and never on the token count."""

    def __init__(self, kernel, configs, key, interp_cfg):
        self.kernel = kernel
        self.tuned = triton.autotune(configs=configs, key=key)(kernel)
        self.interp_cfg = interp_cfg

    def __call__(self, grid_fn, interpret, *args, **kw):
        if interpret:
            meta = dict(self.interp_cfg)
            self.kernel[grid_fn(meta)](*args, **kw, **meta)
        else:
            self.tuned[grid_fn](*args, **kw)


_UP = _Launcher(K_.up_kernel, _CFG_GEMM, ["D", "F", "BLOCK_M"], {"BLOCK_N": 16, "BLOCK_K": 16})
_ROW = _Launcher(K_.rowgemm_kernel, _CFG_GEMM, ["N", "KDIM", "BLOCK_M", "TWO"], {"BLOCK_N": 16, "BLOCK_K": 16})
# dh_kernel writes one d(weight) partial per F-tile, so its BLOCK_N (the partials' layout) is fixed and
# only BLOCK_K / warps / stages are tuned: a config that wrote more tiles could otherwise leave stale ones.
_DH_BLOCK_N, _DH_BLOCK_N_INTERP = 64, 16
_CFG_DH = [triton.Config({"BLOCK_K": k}, num_warps=w, num_stages=s)
           for k, w, s in [(64, 4, 4), (128, 4, 3), (32, 4, 4), (64, 8, 3)]]
_DH = _Launcher(K_.dh_kernel, _CFG_DH, ["D", "F", "BLOCK_M", "BLOCK_N"], {"BLOCK_K": 16})
_DW = _Launcher(K_.dw_kernel, _CFG_DW, ["N", "M", "A_GATHER", "B_GATHER"],
                {"BLOCK_N": 16, "BLOCK_MO": 16, "BLOCK_R": 16})


def _flags(dtype, interpret):
    upcast = interpret and dtype == torch.bfloat16  # the interpreter's bf16 dot is wrong
    prec = "ieee" if (dtype == torch.float32 or interpret) else "tf32"  # tf32 is ignored for 16-bit inputs
    return upcast, prec


def pick_block_m(num_pairs: int, E: int, interpret: bool) -> int:
    if interpret:
        return 16
    return 128 if num_pairs >= 1024 * E else 64


def _cdiv(a, b):
    return -(-a // b)


def _combine(src_PN, idx_TK, T, N, E, dtype):
    out = torch.empty(T, N, dtype=dtype, device=src_PN.device)
    grid = (_cdiv(T, 16), _cdiv(N, 128))
    K_.combine_kernel[grid](src_PN, idx_TK, out, T, N, E, KTOP=idx_TK.shape[1], BLOCK_T=16, BLOCK_N=128)
    return out


class TritonMoEMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, w_TK, idx_TK, w1_EFD, w3_EFD, w2_EDF, interpret):
        x_TD = x_TD.contiguous()
        w1_EFD, w3_EFD, w2_EDF = w1_EFD.contiguous(), w3_EFD.contiguous(), w2_EDF.contiguous()
        idx_TK = idx_TK.long().contiguous()
        wflat_P = w_TK.float().contiguous().reshape(-1)
        T, D = x_TD.shape
        KT = idx_TK.shape[1]
        E, F, _ = w1_EFD.shape
        P = T * KT
        bm = pick_block_m(P, E, interpret)
        al = align_pairs(idx_TK, E, bm)
        R, nb = al.num_rows, al.num_rows // bm
        upcast, prec = _flags(x_TD.dtype, interpret)
        save = any(ctx.needs_input_grad[:6])
        dev, dt = x_TD.device, x_TD.dtype
        h_RF = torch.empty(R, F, dtype=dt, device=dev)
        h1_RF = torch.empty(R, F, dtype=dt, device=dev) if save else h_RF
        h3_RF = torch.empty(R, F, dtype=dt, device=dev) if save else h_RF
        _UP(lambda m: (nb, _cdiv(F, m["BLOCK_N"])), interpret,
            x_TD, w1_EFD, w3_EFD, h_RF, h1_RF, h3_RF, al.sorted_ids_R, al.block_expert_B,
            P, D, F, KT, x_TD.stride(0), w1_EFD.stride(0), w1_EFD.stride(1), w1_EFD.stride(2),
            SAVE=save, BLOCK_M=bm, UPCAST=upcast, PREC=prec)
        y_PD = torch.empty(P, D, dtype=dt, device=dev)
        _ROW(lambda m: (nb, _cdiv(D, m["BLOCK_N"])), interpret,
             h_RF, w2_EDF, y_PD, w2_EDF, h_RF, wflat_P, al.sorted_ids_R, al.block_expert_B,
             P, D, F, KT, F, w2_EDF.stride(0), w2_EDF.stride(1), w2_EDF.stride(2), D,
             A_GATHER=False, TWO=False, SCALE=True, BLOCK_M=bm, UPCAST=upcast, PREC=prec)
        y_TD = _combine(y_PD, idx_TK, T, D, E, dt)
        if save:
            ctx.save_for_backward(x_TD, w_TK, idx_TK, wflat_P, w1_EFD, w3_EFD, w2_EDF, h_RF, h1_RF, h3_RF,
                                  al.sorted_ids_R, al.block_expert_B, al.pad_off_E, al.pad_cnt_E)
            ctx.meta = (bm, interpret)
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        (x_TD, w_TK, idx_TK, wflat_P, w1_EFD, w3_EFD, w2_EDF, h_RF, h1_RF, h3_RF,
         ids_R, bexp_B, pad_off_E, pad_cnt_E) = ctx.saved_tensors
        bm, interpret = ctx.meta
        need_x, need_w, _, need_w1, need_w3, need_w2 = ctx.needs_input_grad[:6]
        dy_TD = dy_TD.to(x_TD.dtype).contiguous()
        T, D = x_TD.shape
        KT = idx_TK.shape[1]
        E, F, _ = w1_EFD.shape
        P, R = T * KT, ids_R.numel()
        nb = R // bm
        upcast, prec = _flags(x_TD.dtype, interpret)
        dev, dt = x_TD.device, x_TD.dtype
        dh1_RF = torch.empty(R, F, dtype=dt, device=dev)
        dh3_RF = torch.empty(R, F, dtype=dt, device=dev)
        bn_dh = _DH_BLOCK_N_INTERP if interpret else _DH_BLOCK_N
        n_ftiles = _cdiv(F, bn_dh)
        dwp = torch.zeros(n_ftiles, R, dtype=torch.float32, device=dev)
        _DH(lambda m: (nb, n_ftiles), interpret,
            dy_TD, w2_EDF, h1_RF, h3_RF, wflat_P, dh1_RF, dh3_RF, dwp, ids_R, bexp_B,
            P, D, F, KT, R, dy_TD.stride(0), w2_EDF.stride(0), w2_EDF.stride(1), w2_EDF.stride(2),
            BLOCK_M=bm, BLOCK_N=bn_dh, UPCAST=upcast, PREC=prec)
        dx = dw = dw1 = dw3 = dw2 = None
        if need_w:
            dw_R = dwp.sum(0)  # fixed-order reduction over the F tiles
            dw_ext = torch.zeros(P + 1, dtype=torch.float32, device=dev)
            dw_ext.scatter_(0, ids_R, dw_R)  # pair ids are distinct; padding rows (all 0.0) land on slot P
            dw = dw_ext[:P].view(T, KT).to(w_TK.dtype)
        if need_x:
            dx_PD = torch.empty(P, D, dtype=dt, device=dev)
            _ROW(lambda m: (nb, _cdiv(D, m["BLOCK_N"])), interpret,
                 dh1_RF, w1_EFD, dx_PD, w3_EFD, dh3_RF, wflat_P, ids_R, bexp_B,
                 P, D, F, KT, F, w1_EFD.stride(0), w1_EFD.stride(2), w1_EFD.stride(1), D,
                 A_GATHER=False, TWO=True, SCALE=False, BLOCK_M=bm, UPCAST=upcast, PREC=prec)
            dx = _combine(dx_PD, idx_TK, T, D, E, dt)

        def run_dw(a, b, out, N, M, a_gather, b_gather, a_scale):
            _DW(lambda m: (E, _cdiv(N, m["BLOCK_N"]), _cdiv(M, m["BLOCK_MO"])), interpret,
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
    check_mlp_args(x, weights, indices, w1, w3, w2)
    return TritonMoEMLP.apply(x, weights, indices, w1, w3, w2, interpret)
