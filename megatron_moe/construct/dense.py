"""Open a dense LLaMA-family checkpoint (HF, Meta or ours; formats/) and load it into a model."""
from __future__ import annotations

import torch
from torch import nn

from ..formats import detect_format, open_dense  # noqa: F401  (re-exported: the construction entry points)
from ..model.sharding import sharding_table


@torch.no_grad()
def load_dense_into_model(model: nn.Module, reader) -> None:
    """Copy every parameter's local slice from the reader, one global tensor at a time."""
    table = sharding_table(model)
    for name, p in model.named_parameters():
        full = reader.get(name)
        p.copy_(table[name].local_slice(full).to(p.dtype))
        del full
