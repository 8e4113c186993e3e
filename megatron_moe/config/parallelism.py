"""The parallel layout (parallel: section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ._base import ConfigError
from .model import ModelConfig
from .moe import MoEConfig


@dataclass
class ParallelConfig:
    """Parallel layout. world = tp * dp * pp for dense parts and world = etp * ep * edp * pp for experts."""

    tp: int = 1
    """Tensor-parallel size (attention heads, dense FFN, vocabulary split across ranks)."""
    ep: int = 1
    """Expert-parallel size (experts split across ranks; tokens move by all-to-all)."""
    etp: Optional[int] = None
    """Expert-tensor-parallel size (each expert's FFN split across ranks); None means 1."""
    sp: bool = False
    """Sequence parallel: activations outside attention/MLP are split along the sequence across the TP group."""
    pp: int = 1
    """Pipeline-parallel size: the decoder layers split into pp stages (the embedding on the first, the final norm
    and LM head on the last), run with torch.distributed.pipelining's 1F1B schedule; the micro-batches of a step
    (gradient accumulation) are the pipeline's micro-batches."""
    pp_layout: Optional[list] = None
    """Decoder layers per pipeline stage, first to last (e.g. [7, 9, 9, 7]; pp entries summing to
    model.num_layers); None splits them evenly (pp must then divide num_layers)."""
    pp_flush: int = 0
    """Micro-batches per pipeline flush: a step's micro-batches go through the pipeline in groups of this many
    (gradients accumulate over the groups, so the step computes the same function). torch's pipeline stage keeps
    a receive buffer per micro-batch of a flush, so this bounds that memory, at the cost of one pipeline fill and
    drain per group. 0: all of the step's micro-batches in one flush. Otherwise at least pp, dividing the
    micro-batches per step."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo."""

    @property
    def expert_tp(self) -> int:
        return self.etp or 1

    def dp(self, world_size: int) -> int:
        return world_size // (self.tp * self.pp)

    def edp(self, world_size: int) -> int:
        return world_size // (self.ep * self.expert_tp * self.pp)

    def stage_layers(self, num_layers: int) -> list[int]:
        """Decoder layers of each pipeline stage (pp_layout, or the even split)."""
        if self.pp_layout is not None:
            return [int(n) for n in self.pp_layout]
        return [num_layers // self.pp] * self.pp

    def stage_range(self, num_layers: int, stage: int) -> range:
        """Global indices of the decoder layers of pipeline stage `stage`."""
        counts = self.stage_layers(num_layers)
        first = sum(counts[:stage])
        return range(first, first + counts[stage])

    def validate(self, world_size: int, model: ModelConfig, moe: MoEConfig) -> None:
        if self.pp_flush < 0:
            raise ConfigError(f"parallel.pp_flush={self.pp_flush} must be >= 0 (0: one flush per step)")
        for name in ("tp", "ep", "etp", "pp"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"parallel.{name}={v} must be >= 1" + (" (or null for 1)" if name == "etp" else ""))
        if world_size % (self.tp * self.pp):
            sizes = f"tp*pp={self.tp}*{self.pp}" if self.pp > 1 else f"tp={self.tp}"
            raise ConfigError(f"world size {world_size} is not divisible by {sizes}")
        if world_size % (self.ep * self.expert_tp * self.pp):
            sizes = (f"ep*etp*pp={self.ep}*{self.expert_tp}*{self.pp}" if self.pp > 1
                     else f"ep*etp={self.ep}*{self.expert_tp}")
            raise ConfigError(f"world size {world_size} is not divisible by {sizes}")
        self._validate_pipeline(model)
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

    def _validate_pipeline(self, model: ModelConfig) -> None:
        L = model.num_layers
        if self.pp_layout is not None:
            layout = self.pp_layout
            if (not isinstance(layout, (list, tuple)) or len(layout) != self.pp
                    or not all(isinstance(n, int) and not isinstance(n, bool) for n in layout)):
                raise ConfigError(f"parallel.pp_layout={layout!r} must be a list of pp={self.pp} layer counts")
            if min(layout) < 1 or sum(layout) != L:
                raise ConfigError(f"parallel.pp_layout={list(layout)} must give every stage at least one layer and "
                                  f"sum to model.num_layers={L} (it sums to {sum(layout)})")
        elif self.pp > L:
            raise ConfigError(f"parallel.pp={self.pp} exceeds model.num_layers={L} (every stage needs a layer)")
        elif L % self.pp:
            raise ConfigError(f"pp={self.pp} does not divide model.num_layers={L}; give the layers per stage "
                              f"with parallel.pp_layout (e.g. {_uneven_example(L, self.pp)})")
        if self.pp > 1 and model.tie_embeddings:
            raise ConfigError("parallel.pp > 1 with model.tie_embeddings=true is not supported (the embedding and "
                              "the LM head would live on different stages); use pp=1 for tied-embedding models")


def _uneven_example(num_layers: int, pp: int) -> list[int]:
    base, extra = divmod(num_layers, pp)
    return [base + (1 if i < extra else 0) for i in range(pp)]
