"""Typed configuration: one dataclass per section, one docstring per field.

The dataclasses are the single source of truth. YAML files only override their defaults, and
`key.sub=value` command-line overrides are applied on top (values parsed as YAML scalars).

    cfg = load_config("examples/configs/tiny_cpu.yaml", ["train.lr=1e-3", "parallel.ep=2"])
    cfg.validate(world_size=4)

Validation errors are `ConfigError` with one line that names the numbers.

One module per purpose: `model.py`, `moe.py`, `parallelism.py`, `data.py`, `train.py` (train, checkpoint and logging
sections), `root.py` (Config and its cross-section checks), `rope.py` (rotary scaling checks), `presets.py`
(model presets), `building.py` (mappings -> dataclasses, coercion, renamed keys) and `loading.py` (YAML and
overrides, explicit keys). Import from `megatron_moe.config`.
"""
from __future__ import annotations

from ._base import ConfigError
from .data import DataConfig, DomainConfig
from .loading import config_from_dict, dump_config, explicit_keys, load_config, merge, parse_overrides
from .model import ModelConfig
from .moe import ROUTERS, MoEConfig
from .parallelism import ParallelConfig
from .presets import MODEL_PRESETS
from .root import Config
from .rope import ROPE_TYPES, check_rope_scaling
from .train import RENAMED_KEYS, SHARDING_MODES, CheckpointConfig, LoggingConfig, TrainConfig

__all__ = ["ConfigError", "DataConfig", "DomainConfig", "config_from_dict", "dump_config", "explicit_keys",
           "load_config", "merge", "parse_overrides", "ModelConfig", "ROUTERS", "MoEConfig", "ParallelConfig",
           "MODEL_PRESETS", "Config", "ROPE_TYPES", "check_rope_scaling", "RENAMED_KEYS", "SHARDING_MODES",
           "CheckpointConfig", "LoggingConfig", "TrainConfig"]
