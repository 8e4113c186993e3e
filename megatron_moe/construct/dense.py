"""Open a dense LLaMA checkpoint in HF or Meta format (detected from its files) and load it into a model."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..model.sharding import local_slice, splits_of
from .hf_llama import HFLlamaReader
from .meta_llama import MetaLlamaReader


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: expected a checkpoint directory, found a file")
    if (p / "params.json").is_file():
        return "meta"
    if (p / "config.json").is_file():
        return "hf"
    raise CheckpointError(f"{p}: neither an HF checkpoint (config.json) nor a Meta checkpoint (params.json)")


def open_dense(path: str | Path):
    """A reader with `.config` (ModelConfig), `.names()` and `.get(canonical_name)`."""
    return MetaLlamaReader(path) if detect_format(path) == "meta" else HFLlamaReader(path)


@torch.no_grad()
def load_dense_into_model(model: nn.Module, reader) -> None:
    """Copy every parameter's local slice from the reader, one global tensor at a time."""
    for name, p in model.named_parameters():
        full = reader.get(name)
        p.copy_(local_slice(full, splits_of(p)).to(p.dtype))
        del full
