"""Dataclass sections from plain mappings: nested building, type coercion, unknown and renamed keys, presets."""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any

from ._base import ConfigError
from .model import ModelConfig
from .presets import MODEL_PRESETS
from .train import RENAMED_KEYS


def _build(cls, values: Any, where: str):
    """Build dataclass `cls` from a mapping, recursing into nested dataclasses; unknown keys are errors."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    values = dict(values)
    if cls is ModelConfig and "preset" in values:
        name = values.pop("preset")
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
        values = {**MODEL_PRESETS[name], **values}
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            renamed = RENAMED_KEYS.get(f"{where}.{key}".removeprefix("config."))
            if renamed:
                raise ConfigError(f"unknown config key {where}.{key}: {renamed}")
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {where}.{key}{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, kind, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check/convert a scalar to the annotated type (int->float allowed); raise ConfigError otherwise."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"{where}={value!r} must be a finite number")
        if number is not None:
            return number
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind in (list, dict) or origin in (list, dict):
        want = origin or kind
        if isinstance(value, want):
            return value
    if kind is Any:
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{where}={value!r} should be of type {name}")
