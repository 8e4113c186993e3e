"""The parallel layout (parallel: section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ._base import ConfigError
from .model import ModelConfig
from .moe import MoEConfig


@dataclass
class ParallelConfig:
    """Parallel layout. world = tp * dp for dense parts and world = etp * ep * edp for experts."""

    tp: int = 1
    """Tensor-parallel size (attention heads, dense FFN, vocabulary split across ranks)."""
    ep: int = 1
    """Expert-parallel size (experts split across ranks; tokens move by all-to-all)."""
    etp: Optional[int] = None
    """Expert-tensor-parallel size (each expert's FFN split across ranks); None means 1."""
    sp: bool = False
    """Sequence parallel: activations outside attention/MLP are split along the sequence across the TP group."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo."""

    @property
    def expert_tp(self) -> int:
        return self.etp or 1

    def dp(self, world_size: int) -> int:
        return world_size // self.tp

    def edp(self, world_size: int) -> int:
        return world_size // (self.ep * self.expert_tp)

    def validate(self, world_size: int, model: ModelConfig, moe: MoEConfig) -> None:
        for name in ("tp", "ep", "etp"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"parallel.{name}={v} must be >= 1" + (" (or null for 1)" if name == "etp" else ""))
        if world_size % self.tp:
            raise ConfigError(f"world size {world_size} is not divisible by tp={self.tp}")
        if world_size % (self.ep * self.expert_tp):
            raise ConfigError(f"world size {world_size} is not divisible by ep*etp={self.ep}*{self.expert_tp}")
        if model.num_heads % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide num_heads={model.num_heads}")
        if model.kv_heads % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide num_kv_heads={model.kv_heads}")
        if model.intermediate_size % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide intermediate_size={model.intermediate_size}")
        if model.vocab_size % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide vocab_size={model.vocab_size}")
        if self.sp and self.tp == 1:
            raise ConfigError("parallel.sp=true needs tp > 1")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ConfigError(f"parallel.backend={self.backend!r} is not one of auto, nccl, gloo")
        if moe.enabled:
            if moe.num_experts % self.ep:
                raise ConfigError(f"ep={self.ep} does not divide num_experts={moe.num_experts}")
            if moe.ffn_size(model) % self.expert_tp:
                raise ConfigError(f"etp={self.expert_tp} does not divide expert_ffn_size={moe.ffn_size(model)}")
        elif self.ep > 1:
            raise ConfigError(f"parallel.ep={self.ep} needs an MoE model (moe.num_experts > 0)")
