"""YAML files and `key.sub=value` overrides -> Config: parsing, merging, explicit keys, dumping."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from ._base import ConfigError
from .building import _build
from .root import Config


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ['a.b=1', 'c=x'] into a nested dict, values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        from ..structured import parse_yaml_scalar

        key, raw = item.split("=", 1)
        value = parse_yaml_scalar(raw, f"override {item!r}", ConfigError)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return nested


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge; `extra` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(values: dict, sources: Optional[dict] = None) -> Config:
    """Build and type-check a Config from nested values. `sources` maps a top-level part of the values to where
    it came from (default: every explicit key is attributed to 'the config')."""
    cfg = _build(Config, values, "config")
    for key in explicit_keys(values):
        cfg.explicit[key] = (sources or {}).get(key, "the config")
    return cfg


def explicit_keys(values: dict) -> list[str]:
    """Dotted keys the user wrote in the model and moe sections. `model.preset` itself is one, but the fields it
    fills are not: they are defaults, which a loaded checkpoint replaces."""
    out = []
    for section in ("model", "moe"):
        sec = values.get(section) or {}
        if isinstance(sec, dict):
            out += [f"{section}.{k}" for k in sorted(sec)]
    return out


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (or defaults when path is None) and apply key.sub=value overrides."""
    from ..structured import read_yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = read_yaml(path, expect=dict, error=ConfigError, what="config file")
    extra = parse_overrides(overrides or [])
    sources = {k: str(path) for k in explicit_keys(values)} if path is not None else {}
    sources.update({k: "the command line" for k in explicit_keys(extra)})
    return config_from_dict(merge(values, extra), sources)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (round-trips through load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
