"""ConfigError and the shared range check of every section."""
from __future__ import annotations

from ..errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration that cannot run; the message is one line naming the offending values."""


def _at_least(section: str, obj, names: tuple, low: float, strict: bool = False) -> None:
    """ConfigError unless every named (non-None) field is >= low (> low when strict)."""
    for name in names:
        v = getattr(obj, name)
        if v is None:
            continue
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise ConfigError(f"{section}.{name}={v} must be a finite number")
        if v < low or (strict and v == low):
            raise ConfigError(f"{section}.{name}={v} must be {'>' if strict else '>='} {low:g}")
