"""The decoder architecture (model: section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ._base import ConfigError, _at_least
from .rope import check_rope_scaling


@dataclass
class ModelConfig:
    """A LLaMA-architecture decoder (the dense skeleton every MoE model is built on)."""

    hidden_size: int = 4096
    """Model width d."""
    intermediate_size: int = 11008
    """Dense FFN width d_ff (SwiGLU). MoE experts split this into num_experts parts by default."""
    num_layers: int = 32
    """Number of decoder layers."""
    num_heads: int = 32
    """Number of attention (query) heads."""
    num_kv_heads: Optional[int] = None
    """Key/value heads for grouped-query attention; None means num_heads (plain multi-head)."""
    vocab_size: int = 32000
    """Vocabulary size (rows of the embedding and of the LM head)."""
    head_dim: Optional[int] = None
    """Width h of one attention head; None means hidden_size // num_heads (q is [num_heads*h, D])."""
    max_seq_len: int = 4096
    """Longest sequence the model accepts (HF max_position_embeddings)."""
    rope_theta: float = 10000.0
    """RoPE base frequency θ."""
    rope_scaling: Optional[dict] = None
    """Rotary scaling, HF style without rope_theta: None or {"rope_type": "default" | "linear" | "llama3" | "yarn",
    "factor": ..., ...} (llama3: low_freq_factor, high_freq_factor, original_max_position_embeddings; yarn:
    original_max_position_embeddings, beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim, truncate)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    qkv_bias: bool = False
    """q/k/v projections have a bias (Qwen2; LLaMA with attention_bias)."""
    attn_out_bias: bool = False
    """The attention output projection has a bias (LLaMA with attention_bias)."""
    tie_embeddings: bool = False
    """The LM head is the input embedding (one parameter; LLaMA-3.2 1B/3B, small Qwen2.5)."""
    sliding_window: Optional[int] = None
    """Sliding-window attention width of the source model (Mistral v0.1, Qwen2 with use_sliding_window). Not
    implemented: sequences longer than the window are refused, so every accepted input computes exactly."""
    init_std: float = 0.02
    """Std of the normal init for weights of a model trained from scratch (converted models ignore it)."""
    bos_token_id: int = 1
    """Beginning-of-sequence token id (LLaMA-2: 1)."""
    eos_token_id: Any = 2
    """End-of-sequence token id, or a list of them (LLaMA-3.1 instruct: [128001, 128008, 128009])."""

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_width(self) -> int:
        """h: head_dim, or hidden_size // num_heads."""
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def seq_limit(self) -> int:
        """Longest sequence this model computes exactly: max_seq_len, and the sliding window when there is one."""
        return min(self.max_seq_len, self.sliding_window or self.max_seq_len)

    def validate(self) -> None:
        _at_least("model", self, ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "sliding_window"), 0,
                  strict=True)
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}")
        if self.num_heads % self.kv_heads:
            raise ConfigError(f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.kv_heads}")
        if self.head_width % 2:
            raise ConfigError(f"head_dim={self.head_width} must be even for rotary embeddings")
        _at_least("model", self, ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                                  "vocab_size", "max_seq_len", "rope_theta", "norm_eps"), 0, strict=True)
        _at_least("model", self, ("init_std",), 0)
        check_rope_scaling(self.rope_scaling, "model.rope_scaling")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.vocab_size
                                  for i in ids):
                raise ConfigError(f"model.{name}={value!r} must be a token id in [0, {self.vocab_size})"
                                  + (" or a list of them" if name == "eos_token_id" else ""))
