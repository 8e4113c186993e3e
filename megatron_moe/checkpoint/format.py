"""The on-disk checkpoint layout (docs/checkpoint_format.md): what makes a directory a checkpoint, its config."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, ConfigError, ModelConfig, MoEConfig
from ..config.building import _build
from ..errors import CheckpointError
from ..structured import read_json

FORMAT, VERSION = "megatron_moe", 1
CONFIG, MODEL_DIR, INDEX, LATEST = "config.json", "model", "index.json", "latest"
# Tokenizer files a checkpoint carries (copied in by import/convert/train, out by export), with the source model's
# generation defaults (its special-token ids); construction.json is the expert-construction record. All are
# carried unchanged by every step that writes a new checkpoint; export writes the missing tokenizer files.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json")
CARRIED_FILES = TOKENIZER_FILES + ("construction.json",)


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG).is_file() and (p / MODEL_DIR / INDEX).is_file()


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run/checkpoints directory whose `latest` pointer names one."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint")
    for base in (p, p / "checkpoints"):
        if is_checkpoint(base):
            return base
        if (base / LATEST).is_file():
            target = base / (base / LATEST).read_text().strip()
            if is_checkpoint(target):
                return target
            raise CheckpointError(f"{base / LATEST} points at {target.name}, which is not a complete checkpoint")
    raise CheckpointError(f"{p}: not a megatron_moe checkpoint (needs {CONFIG} and {MODEL_DIR}/{INDEX})")


def config_dict(model: ModelConfig, moe: MoEConfig, extra: dict | None = None) -> dict:
    import dataclasses

    out = {"format": FORMAT, "version": VERSION, "model": dataclasses.asdict(model), "moe": dataclasses.asdict(moe)}
    out.update(extra or {})
    return out


def read_config(path: str | Path) -> tuple[ModelConfig, MoEConfig, dict]:
    """Model and MoE config of a checkpoint, plus the raw config.json."""
    p = resolve(path)
    raw = read_json(p / CONFIG, expect=dict, error=CheckpointError, what="checkpoint config")
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{p / CONFIG}: format is {raw.get('format')!r}, expected {FORMAT!r}")
    try:
        return _build(ModelConfig, raw["model"], "model"), _build(MoEConfig, raw.get("moe") or {}, "moe"), raw
    except (KeyError, ConfigError) as err:
        raise CheckpointError(f"{p / CONFIG}: {err}") from None


def apply_checkpoint_config(cfg: Config, path: str | Path) -> Config:
    """Take model and moe sections from a checkpoint (what `checkpoint.load` means for the model)."""
    cfg.model, cfg.moe, _ = read_config(path)
    return cfg


def read_index(path: str | Path) -> dict:
    """model/index.json: {"parts": {part: [tensor names]}, "dtype": str}; a malformed one is a CheckpointError.
    Part names must be plain directory names inside model/ (no path tricks)."""
    p = resolve(path)
    f = p / MODEL_DIR / INDEX
    index = read_json(f, expect=dict, error=CheckpointError, what="checkpoint index")
    parts = index.get("parts")
    if not isinstance(parts, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in parts.items()):
        raise CheckpointError(f"{f}: not a checkpoint index (needs 'parts': {{part: [tensor names]}})")
    bad = [k for k in parts if not k or "/" in k or "\\" in k or k.startswith(".")]
    if bad:
        raise CheckpointError(f"{f}: part name {bad[0]!r} is not a directory inside {MODEL_DIR}/")
    if not isinstance(index.get("dtype", "float32"), str):
        raise CheckpointError(f"{f}: 'dtype' must be a string")
    return index
