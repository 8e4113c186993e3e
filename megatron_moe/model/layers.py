"""LLaMA building blocks: RMSNorm, rotary embeddings, GQA attention, SwiGLU MLP (tensor parallel).

Shapes: B batch, S sequence (S_l = local sequence under SP), D hidden, H/G local query/kv heads, h head dim,
F_l local FFN width. Activations are [B, S, D]; sequence parallelism splits dim 1 across the TP group.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..parallel import ParallelState, gather_seq
from .sharding import mark
from .tp import column, column_linear, row, row_linear

try:  # optional fast path; apex is not on PyPI
    from apex.normalization import FusedRMSNorm as _ApexRMSNorm  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    _ApexRMSNorm = None


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x²) + eps), computed in fp32 and cast back (as HF LLaMA does)."""

    def __init__(self, dim: int, eps: float, sequence_parallel: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        mark(self.weight, sequence_parallel=sequence_parallel)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        if _ApexRMSNorm is not None and x_BSD.is_cuda and x_BSD.dtype == self.weight.dtype:
            from apex.normalization.fused_layer_norm import fused_rms_norm_affine  # type: ignore

            return fused_rms_norm_affine(x_BSD, self.weight, self.weight.shape, self.eps)
        x32 = x_BSD.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x_BSD.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies θ^(-2i/h); `cfg.rope_scaling` is the hook for LLaMA-3 style or linear scaling."""
    h = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, h, 2, dtype=torch.float64) / h))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type"))
    if kind in (None, "default"):
        return inv.float()
    if kind == "linear":
        return (inv / sc["factor"]).float()
    if kind == "llama3":
        factor, low, high = sc["factor"], sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
        old_len = sc.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        smooth = ((old_len / wavelen) - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled).float()
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: linear, llama3)")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables [S, h] in HF's half-split layout, built lazily in fp32 on the input's device."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x_BHSh: torch.Tensor, cos_Sh: torch.Tensor, sin_Sh: torch.Tensor) -> torch.Tensor:
    x32 = x_BHSh.float()
    return (x32 * cos_Sh + rotate_half(x32) * sin_Sh).to(x_BHSh.dtype)


class Attention(nn.Module):
    """Causal GQA self-attention; heads split over TP (wq/wk/wv column-parallel, wo row-parallel)."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.ps, self.h = ps, cfg.head_dim
        self.n_heads, self.n_kv = cfg.num_heads // ps.tp_size, cfg.kv_heads // ps.tp_size
        d = cfg.hidden_size
        self.wq = column_linear(d, cfg.num_heads * self.h, ps)
        self.wk = column_linear(d, cfg.kv_heads * self.h, ps)
        self.wv = column_linear(d, cfg.kv_heads * self.h, ps)
        self.wo = row_linear(cfg.num_heads * self.h, d, ps)

    def forward(self, x_BSD: torch.Tensor, cos_Sh: torch.Tensor, sin_Sh: torch.Tensor) -> torch.Tensor:
        ps = self.ps
        if ps.sp:
            x_BSD = gather_seq(x_BSD, ps.tp_group, dim=1)  # [B, S_l, D] -> [B, S, D]
        B, S, _ = x_BSD.shape
        q_BHSh = column(self.wq, x_BSD, ps).view(B, S, self.n_heads, self.h).transpose(1, 2)
        k_BGSh = column(self.wk, x_BSD, ps).view(B, S, self.n_kv, self.h).transpose(1, 2)
        v_BGSh = column(self.wv, x_BSD, ps).view(B, S, self.n_kv, self.h).transpose(1, 2)
        q_BHSh, k_BGSh = apply_rotary(q_BHSh, cos_Sh, sin_Sh), apply_rotary(k_BGSh, cos_Sh, sin_Sh)
        o_BHSh = F.scaled_dot_product_attention(q_BHSh, k_BGSh, v_BGSh, is_causal=True,
                                                enable_gqa=self.n_kv != self.n_heads)
        o_BSHh = o_BHSh.transpose(1, 2).reshape(B, S, self.n_heads * self.h)
        return row(self.wo, o_BSHh, ps)


class DenseMLP(nn.Module):
    """SwiGLU FFN: w2( silu(w1 x) * (w3 x) ); w1/w3 column-parallel, w2 row-parallel.
    The input of w2 is h = silu(w1 x) * (w3 x) (expert construction hooks it there)."""

    def __init__(self, hidden: int, ffn: int, ps: ParallelState):
        super().__init__()
        self.ps = ps
        self.w1 = column_linear(hidden, ffn, ps)
        self.w3 = column_linear(hidden, ffn, ps)
        self.w2 = row_linear(ffn, hidden, ps)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        ps = self.ps
        if ps.sp:
            x_BSD = gather_seq(x_BSD, ps.tp_group, dim=1)
        h_BSF = F.silu(column(self.w1, x_BSD, ps)) * column(self.w3, x_BSD, ps)
        return row(self.w2, h_BSF, ps)


def rope_cache(rotary: Rotary, seq_len: int, device: torch.device,
               cache: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    key = (seq_len, str(device))
    if cache is not None and key in cache:
        return cache[key]
    out = rotary(seq_len, device)
    if cache is not None:
        cache[key] = out
    return out
