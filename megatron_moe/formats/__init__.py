"""Checkpoint formats of the outside world, one adapter each (key table + the few tensor transforms it needs):

  dense sources  HF llama / mistral / qwen2 (dense.HFDenseReader), Meta consolidated.*.pth (meta.MetaLlamaReader),
                 and our own dense checkpoints (OursReader); `open_dense(path)` picks by the files present
  exports        llama, mistral, qwen2 (dense.DenseExport), mixtral, qwen2-moe, llama-moe (EXPORTS)
  imports        llama-moe (llama_moe.LlamaMoEReader)

A reader has `.config` (ModelConfig), `.names()`, `.get(canonical name) -> tensor` and `.release()`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterable

import torch

from ..errors import CheckpointError
from .dense import DenseExport, ExportError, HFDenseReader, canonical_shapes

EXPORT_FORMATS = ("mixtral", "qwen2-moe", "llama-moe", "llama", "mistral", "qwen2")


def export_adapter(fmt: str):
    """The export adapter of `fmt`: check(model, moe), hf_config(model, moe, dtype_name), convert(name, t, ...)."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt in ("llama", "mistral", "qwen2"):
        return DenseExport(fmt)
    return importlib.import_module(f"{__name__}.{fmt.replace('-', '_')}")


class OursReader:
    """A dense checkpoint of ours as a source for convert (the same interface as the HF and Meta readers)."""

    def __init__(self, path: str | Path):
        from ..checkpoint.store import PartReader
        from ..checkpoint.verify import verify_checkpoint

        self.parts = PartReader(path)
        self.path = self.parts.path
        self.config, moe, _ = verify_checkpoint(self.path)
        if moe.enabled:
            raise CheckpointError(f"{self.path}: already an MoE checkpoint ({moe.num_experts} experts); "
                                  f"convert needs a dense one")
        self.shapes = canonical_shapes(self.config)

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str) -> torch.Tensor:
        return self.parts.get(name)

    def release(self) -> None:
        self.parts.release()


def detect_format(path: str | Path) -> str:
    """meta | hf | ours, from the files present; CheckpointError for anything else."""
    from ..checkpoint.format import is_checkpoint

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: expected a checkpoint directory, found a file")
    if (p / "params.json").is_file():
        return "meta"
    if is_checkpoint(p) or (p / "checkpoints" / "latest").is_file():
        return "ours"
    if (p / "config.json").is_file():
        return "hf"
    raise CheckpointError(f"{p}: neither an HF checkpoint (config.json) nor a Meta checkpoint (params.json)")


def open_dense(path: str | Path, ignore_fields: Iterable[str] = ()):
    """A dense model reader for an HF, Meta or megatron_moe directory."""
    from .meta import MetaLlamaReader

    fmt = detect_format(path)
    if fmt == "meta":
        return MetaLlamaReader(path)
    if fmt == "ours":
        return OursReader(path)
    return HFDenseReader(path, ignore_fields)


__all__ = ["EXPORT_FORMATS", "ExportError", "HFDenseReader", "OursReader", "canonical_shapes", "detect_format",
           "export_adapter", "open_dense"]
