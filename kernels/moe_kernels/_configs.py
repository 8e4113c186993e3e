"""Tile shapes and autotune spaces of the expert-MLP kernels, per compile target, dtype and BLOCK_M.

Every list here is compiled for sm_90a and sm_80 by tests/kernels/test_kernels_aot.py (moe_kernels.aot),
which fails if a config needs more shared memory than the target has, if a 16-bit config spills
registers, or if an sm_90 16-bit GEMM does not use wgmma. kernels/README.md explains the tile design;
docs/benchmarks.md has the registers / shared memory / CTAs per SM the compiler reports for each.

Rows are (BLOCK_N, BLOCK_K, warps, stages), or (BLOCK_N, BLOCK_MO, BLOCK_R, warps, stages) for dW.
sm90 (Hopper, wgmma): BLOCK_M = 128 tiles run 8 warps (two consumer warpgroups of 64 rows each) with
    wgmma N = 128 or 256; every list also has a config at <= 128 registers (two CTAs per SM).
sm80 (Ampere and other GPUs, mma.sync, 163 KB shared memory): 64-wide N at BLOCK_M = 128 where two
    accumulators (up) would spill at 128.
fp32 (both): FMA, no tensor cores (input_precision="ieee"): small 64-row tiles that fit everywhere.
"""
from __future__ import annotations

import torch
import triton

from ._launch import INTERP, Target


def _gemm(rows):
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in rows]


def _dw(rows):
    return [triton.Config({"BLOCK_N": n, "BLOCK_MO": m, "BLOCK_R": r}, num_warps=w, num_stages=s)
            for n, m, r, w, s in rows]


# (kernel, target, BLOCK_M) -> configs for 16-bit inputs
_HALF = {
    ("up", "sm90", 128): _gemm([(128, 32, 8, 4), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 8, 4)]),
    ("up", "sm90", 64): _gemm([(128, 32, 8, 4), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)]),
    ("down", "sm90", 128): _gemm([(256, 64, 8, 3), (256, 32, 8, 4), (128, 64, 8, 3), (128, 32, 8, 4)]),
    ("down", "sm90", 64): _gemm([(256, 32, 8, 4), (256, 64, 4, 3), (128, 64, 4, 3), (128, 32, 4, 4)]),
    ("dx", "sm90", 128): _gemm([(256, 32, 8, 3), (128, 64, 8, 3), (128, 32, 8, 3)]),
    ("dx", "sm90", 64): _gemm([(256, 32, 8, 3), (256, 64, 8, 3), (128, 64, 8, 3), (128, 32, 4, 3)]),
    ("dh", "sm90", 128): _gemm([(128, 64, 8, 3), (128, 32, 8, 4), (64, 64, 8, 3), (64, 32, 8, 4)]),
    ("dh", "sm90", 64): _gemm([(128, 32, 4, 4), (128, 64, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4)]),
    ("up", "sm80", 128): _gemm([(64, 32, 8, 4), (64, 64, 8, 3), (64, 64, 8, 4)]),
    ("up", "sm80", 64): _gemm([(128, 32, 8, 4), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)]),
    ("down", "sm80", 128): _gemm([(128, 32, 8, 4), (128, 64, 8, 3), (128, 64, 8, 4)]),
    ("down", "sm80", 64): _gemm([(128, 32, 8, 4), (128, 64, 8, 3), (128, 64, 4, 3), (256, 32, 8, 3)]),
    ("dx", "sm80", 128): _gemm([(128, 32, 8, 3), (128, 32, 8, 4), (128, 64, 8, 3)]),
    ("dx", "sm80", 64): _gemm([(128, 32, 8, 4), (128, 64, 8, 3), (128, 32, 4, 3), (256, 32, 8, 3)]),
    ("dh", "sm80", 128): _gemm([(64, 64, 8, 3), (64, 32, 8, 4), (128, 32, 8, 4), (128, 64, 8, 3)]),
    ("dh", "sm80", 64): _gemm([(64, 64, 4, 3), (64, 32, 4, 4), (128, 32, 4, 4), (128, 64, 4, 3)]),
}
_HALF_DW = {
    "sm90": _dw([(128, 128, 32, 8, 3), (128, 256, 32, 8, 3), (64, 128, 32, 4, 3), (128, 128, 64, 8, 3)]),
    "sm80": _dw([(128, 128, 32, 8, 3), (64, 128, 32, 4, 3), (64, 128, 32, 8, 3), (128, 128, 64, 8, 3)]),
}
_FP32 = {"sm90": _gemm([(64, 32, 4, 3), (32, 16, 4, 2)]), "sm80": _gemm([(32, 16, 4, 2), (64, 16, 4, 3)])}
_FP32_DW = _dw([(64, 64, 16, 4, 3), (32, 64, 32, 4, 3)])

# 16-bit at sizes that are not multiples of 16 (BLOCK_M = 64)
_UNALIGNED = {"sm90": _gemm([(64, 32, 8, 3), (32, 32, 8, 3)]), "sm80": _gemm([(64, 32, 8, 3), (32, 32, 8, 3)])}
_UNALIGNED_DW = _dw([(64, 64, 32, 4, 3)])

_INTERP_GEMM = _gemm([(16, 16, 4, 1)])
_INTERP_DW = _dw([(16, 16, 16, 4, 1)])


def group_m(target: Target) -> int:
    """Row tiles per group of the grouped tile order (_mlp_kernels._tile): 16 row tiles (2 K rows) and
    the column tiles of a few experts stay in L2 together; 2 under the interpreter, so the tiny test
    shapes cross group boundaries."""
    return 2 if target is INTERP else 16


def aligned(*dims: int) -> bool:
    """All sizes multiples of 16 elements: Triton then specialises strides as 16-divisible and the
    loads are vectorised (cp.async); odd sizes (D 1023, F 689) load element by element."""
    return all(d % 16 == 0 for d in dims)


def pick_block_m(num_pairs: int, E: int, target: Target, dtype: torch.dtype, is_aligned: bool = True) -> int:
    """Row-tile height: 16 under the interpreter (tiny test shapes); 64 for fp32 (FMA, not tensor
    cores) and for unaligned sizes (scalar loads need a register per element); for aligned 16-bit,
    128 when experts average >= 1024 rows (padding to the tile wastes <= 1/8 of a tile), else 64."""
    if target is INTERP:
        return 16
    if dtype == torch.float32 or not is_aligned:
        return 64
    return 128 if num_pairs >= 1024 * E else 64


def configs(kind: str, target: Target, dtype: torch.dtype, block_m: int, is_aligned: bool = True) -> list:
    """Autotune list of one kernel: kind is "up", "down", "dx", "dh" or "dw"."""
    if target is INTERP:
        return _INTERP_DW if kind == "dw" else _INTERP_GEMM
    if kind == "dw":
        if dtype == torch.float32:
            return _FP32_DW
        return _HALF_DW[target.name] if is_aligned else _UNALIGNED_DW
    if dtype == torch.float32:
        return _FP32[target.name]
    if not is_aligned:
        return _UNALIGNED[target.name]
    return _HALF[(kind, target.name, block_m)]


def max_ftiles(F: int, configs: list) -> int:
    """d(weight) partial slots dh_kernel writes: one per F tile of the narrowest BLOCK_N in configs."""
    return triton.cdiv(F, min(c.kwargs["BLOCK_N"] for c in configs))
