"""Rotary-embedding scaling types and their checks (model.rope_scaling)."""
from __future__ import annotations

from typing import Optional

from ._base import ConfigError


ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_ROPE_KEYS = {"default": set(), "linear": {"factor"},
              "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
              "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                       "mscale", "mscale_all_dim", "truncate"}}


def check_rope_scaling(sc: Optional[dict], where: str) -> None:
    """ConfigError unless `sc` is None or a rotary scaling this model implements, with only keys it uses."""
    if sc is None:
        return
    if not isinstance(sc, dict):
        raise ConfigError(f"{where} must be a mapping or null, got {type(sc).__name__}")
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"{where}: rope_type={kind!r} is not implemented (supported: {', '.join(ROPE_TYPES)})")
    extra = set(sc) - _ROPE_KEYS[kind] - {"rope_type", "type", "rope_theta"}
    if extra:
        raise ConfigError(f"{where}: {sorted(extra)[0]!r} is not used by rope_type={kind} and would be ignored")
    if kind != "default" and not isinstance(sc.get("factor"), (int, float)):
        raise ConfigError(f"{where}: rope_type={kind} needs a numeric 'factor'")
    if kind == "llama3" and "original_max_position_embeddings" not in sc:
        raise ConfigError(f"{where}: rope_type=llama3 needs 'original_max_position_embeddings'")


def _llama3_rope(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
