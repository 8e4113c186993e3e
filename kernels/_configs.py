"""Tile shapes and autotune spaces of the expert-MLP kernels, per compile target, dtype and BLOCK_M.

Every list here is compiled for sm_90a and sm_80 by tests/kernels/test_kernels_aot.py, which fails if a
config needs more shared memory than the target has, if a 16-bit (or any non-GEMM) config spills
registers, or if an sm_90 16-bit GEMM does not use wgmma. See kernels/README.md (tile design).
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


_GEMM = _gemm([(64, 64, 4, 4), (128, 64, 8, 3), (64, 128, 4, 3), (128, 32, 4, 4)])
_DH = _gemm([(64, 64, 4, 4), (64, 128, 4, 3), (64, 32, 4, 4), (64, 64, 8, 3)])
_DW = _dw([(64, 64, 64, 4, 4), (128, 64, 32, 8, 3), (128, 128, 32, 8, 3)])

_INTERP_GEMM = _gemm([(16, 16, 4, 1)])
_INTERP_DW = _dw([(16, 16, 16, 4, 1)])


def group_m(target: Target) -> int:
    """Row tiles per group of the grouped tile order (_mlp_kernels._tile): 16 row tiles (2 K rows) and
    the column tiles of a few experts stay in L2 together; 2 under the interpreter, so the tiny test
    shapes cross group boundaries."""
    return 2 if target is INTERP else 16


def pick_block_m(num_pairs: int, E: int, target: Target, dtype: torch.dtype) -> int:
    """Row-tile height: 128 when experts average >= 1024 rows (padding waste <= 1/8 of a tile per
    expert), else 64; 16 under the interpreter (tiny test shapes)."""
    if target is INTERP:
        return 16
    return 128 if num_pairs >= 1024 * E else 64


def up_configs(target: Target, dtype: torch.dtype, block_m: int) -> list:
    return _INTERP_GEMM if target is INTERP else _GEMM


def down_configs(target: Target, dtype: torch.dtype, block_m: int) -> list:
    return _INTERP_GEMM if target is INTERP else _GEMM


def dx_configs(target: Target, dtype: torch.dtype, block_m: int) -> list:
    return _INTERP_GEMM if target is INTERP else _GEMM


def dh_configs(target: Target, dtype: torch.dtype, block_m: int) -> list:
    return _INTERP_GEMM if target is INTERP else _DH


def dw_configs(target: Target, dtype: torch.dtype, block_m: int) -> list:
    return _INTERP_DW if target is INTERP else _DW


def max_ftiles(F: int, configs: list) -> int:
    """d(weight) partial slots dh_kernel writes: one per F tile of the narrowest BLOCK_N in configs."""
    return triton.cdiv(F, min(c.kwargs["BLOCK_N"] for c in configs))
