"""The whole run's configuration (Config) and its cross-section checks."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ._base import ConfigError
from .data import DataConfig
from .model import ModelConfig
from .moe import MoEConfig
from .parallelism import ParallelConfig
from .train import CheckpointConfig, LoggingConfig, TrainConfig


@dataclass
class Config:
    """Everything a run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The decoder architecture."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """Mixture-of-Experts settings."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Parallel layout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimization and loop."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging."""

    explicit: dict = field(default_factory=dict, repr=False, compare=False, metadata={"internal": True})
    """Dotted model/moe keys the user wrote -> where (the YAML file, or 'the command line'); a model preset's
    fields are not among them. Filled by load_config / mark_explicit; not part of to_dict. A loaded checkpoint
    supplies the model, so preflight refuses an explicit key that contradicts it, naming where it was written."""

    def mark_explicit(self, keys, source: str) -> None:
        """Record dotted model/moe keys as set by the user at `source` (for callers that build configs in code)."""
        for key in keys:
            self.explicit[key] = source

    def validate(self, world_size: int = 1) -> "Config":
        self.model.validate()
        self.moe.validate(self.model)
        self.parallel.validate(world_size, self.model, self.moe)
        self.train.validate()
        self.data.validate()
        self.checkpoint.validate()
        self.logging.validate()
        dp = self.parallel.dp(world_size)
        if self.train.global_batch_size % (self.train.micro_batch_size * dp):
            raise ConfigError(f"train.global_batch_size={self.train.global_batch_size} is not divisible by "
                              f"micro_batch_size*dp={self.train.micro_batch_size}*{dp}")
        n_micro = self.train.global_batch_size // (self.train.micro_batch_size * dp)
        if self.parallel.pp > 1 and n_micro < self.parallel.pp:
            raise ConfigError(f"parallel.pp={self.parallel.pp} needs at least {self.parallel.pp} micro-batches per step "
                              f"(the 1F1B schedule), but global_batch_size / (micro_batch_size*dp) = "
                              f"{self.train.global_batch_size} / ({self.train.micro_batch_size}*{dp}) = {n_micro}; "
                              f"raise train.global_batch_size or lower train.micro_batch_size")
        flush = self.parallel.pp_flush
        if self.parallel.pp > 1 and flush and (flush < self.parallel.pp or n_micro % flush):
            raise ConfigError(f"parallel.pp_flush={flush} must be at least pp={self.parallel.pp} and divide the "
                              f"{n_micro} micro-batches per step")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        if self.model.sliding_window and self.data.seq_len > self.model.sliding_window:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds the sliding window {self.model.sliding_window} "
                              f"of the model, which megatron_moe does not implement; use data.seq_len <= "
                              f"{self.model.sliding_window}")
        return self

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("explicit", None)
        return out
