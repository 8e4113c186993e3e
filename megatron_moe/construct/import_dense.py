"""Import a dense LLaMA-family checkpoint (HF llama/mistral/qwen2, or Meta) into our checkpoint format, streaming."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from tqdm import tqdm

from ..checkpoint import CheckpointWriter, config_dict, part_of
from ..checkpoint.store import copy_tokenizer
from ..config import MoEConfig
from .dense import open_dense


def import_dense(load: str | Path, save: str | Path, dtype: Optional[torch.dtype] = None,
                 progress: bool = True, ignore_fields: Iterable[str] = ()) -> Path:
    """Convert tensor by tensor, one part (layer) in memory at a time. Returns the checkpoint path.
    `ignore_fields`: config.json fields to accept although unknown (formats/hf_config.py)."""
    reader = open_dense(load, ignore_fields)
    cfg = reader.config
    parts: dict[str, list[str]] = {}
    for n in reader.names():
        parts.setdefault(part_of(n), []).append(n)
    with CheckpointWriter(save, config_dict(cfg, MoEConfig(), {"source": str(load)}), background=True) as w:
        for part, names in tqdm(parts.items(), desc="import", unit="part", disable=not progress):
            w.add_part(part, {n: reader.get(n).to(dtype or torch.float32) for n in names})
        copy_tokenizer(load, w)
    return Path(save)
