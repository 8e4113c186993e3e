"""LLaMA building blocks: RMSNorm, rotary embeddings, GQA attention, SwiGLU MLP (tensor parallel).

Shapes: B batch, S sequence (S_l = local sequence under SP), D hidden, H/G local query/kv heads, h head dim,
F_l local FFN width. Activations are [B, S, D]; sequence parallelism splits dim 1 across the TP group.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..parallel import ParallelState, gather_seq
from .sharding import declare
from .tp import column, column_linear, row, row_linear


@functools.lru_cache(maxsize=None)
def apex_rms_norm():
    """apex's fused RMSNorm (`fused_rms_norm_affine`, what its FusedRMSNorm module runs) when apex is importable
    (e.g. in NGC containers), else None. Looked up once, at the first CUDA forward: apex is not on PyPI."""
    try:
        from apex.normalization.fused_layer_norm import fused_rms_norm_affine  # type: ignore
    except ImportError:
        return None
    return fused_rms_norm_affine


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x²) + eps), computed in fp32 and cast back (as HF LLaMA does); on CUDA with apex
    installed and x in the weight's dtype, apex's fused kernel computes it."""

    def __init__(self, dim: int, eps: float, sequence_parallel: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        declare(self, "weight", sequence_parallel=sequence_parallel)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        if x_BSD.is_cuda and x_BSD.dtype == self.weight.dtype:
            fused = apex_rms_norm()
            if fused is not None:
                return fused(x_BSD, self.weight, self.weight.shape, self.eps)
        x32 = x_BSD.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x_BSD.dtype)


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies θ^(-2i/h) after `cfg.rope_scaling`, and the factor cos/sin are multiplied by (1 except
    for yarn). Formulas as transformers' modeling_rope_utils (default, linear, llama3, yarn)."""
    h = cfg.head_width
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, h, 2, dtype=torch.float64) / h))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "default":
        return inv.float(), 1.0
    factor = float(sc["factor"])
    if kind == "linear":
        return (inv / factor).float(), 1.0
    if kind == "llama3":
        low, high = sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
        old_len = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = ((old_len / wavelen) - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled).float(), 1.0
    if kind == "yarn":
        return _yarn(cfg, sc, factor)
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3, yarn)")


def _yarn(cfg: ModelConfig, sc: dict, factor: float) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071): per-dimension blend of interpolated and extrapolated frequencies by a linear ramp
    between the correction dims of beta_fast / beta_slow rotations, and an attention factor on cos/sin."""
    h, base = cfg.head_width, cfg.rope_theta
    old_len = sc.get("original_max_position_embeddings", cfg.max_seq_len)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    att = sc.get("attention_factor")
    if att is None:
        m, m_all = sc.get("mscale"), sc.get("mscale_all_dim")
        att = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def corr_dim(rotations: float) -> float:
        return (h * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(base))

    lo, hi = corr_dim(sc.get("beta_fast") or 32), corr_dim(sc.get("beta_slow") or 1)
    if sc.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, h - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = ((torch.arange(h // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    pos = base ** (torch.arange(0, h, 2, dtype=torch.float32) / h)
    extrapolate = 1 - ramp
    inv = (1.0 / (factor * pos)) * (1 - extrapolate) + (1.0 / pos) * extrapolate
    return inv, float(att)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables [S, h] in HF's half-split layout, built in fp32 on the input's device."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1)
        if self.attention_factor != 1.0:
            return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor
        return emb.cos(), emb.sin()


def apply_rotary(x_BHSh: torch.Tensor, cos_Sh: torch.Tensor, sin_Sh: torch.Tensor) -> torch.Tensor:
    x32 = x_BHSh.float()
    return (x32 * cos_Sh + rotate_half(x32) * sin_Sh).to(x_BHSh.dtype)


class Attention(nn.Module):
    """Causal GQA self-attention; heads split over TP (wq/wk/wv column-parallel, wo row-parallel); optional
    q/k/v biases (split like their rows) and output bias (replicated, added after the TP reduction)."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__()
        self.ps, self.h = ps, cfg.head_width
        self.n_heads, self.n_kv = cfg.num_heads // ps.tp_size, cfg.kv_heads // ps.tp_size
        d, qkv = cfg.hidden_size, cfg.qkv_bias
        self.wq = column_linear(d, cfg.num_heads * self.h, ps, bias=qkv)
        self.wk = column_linear(d, cfg.kv_heads * self.h, ps, bias=qkv)
        self.wv = column_linear(d, cfg.kv_heads * self.h, ps, bias=qkv)
        self.wo = row_linear(cfg.num_heads * self.h, d, ps, bias=cfg.attn_out_bias)

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
