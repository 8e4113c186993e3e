"""In-process loading for inference and evaluation.

    from megatron_moe import load_model
    model = load_model("runs/x", device="cpu", dtype=torch.float32)   # checkpoint dir or run dir (latest)
    logits_BSV = model(input_ids_BS)
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model of any checkpoint of ours (converted, imported or trained; saved in any TP/EP layout), built
    for one process, in eval mode, on `device` in `dtype`. Raises CheckpointError for a missing/corrupt one."""
    from torch.distributed.checkpoint.api import CheckpointException

    from .checkpoint import load_model as fill, read_config, resolve
    from .errors import CheckpointError
    from .config import Config
    from .model import build_model

    ckpt = resolve(path)
    model_cfg, moe_cfg, _ = read_config(ckpt)
    model = build_model(Config(model=model_cfg, moe=moe_cfg), recompute=False)
    try:
        fill(model, ckpt)
    except CheckpointException as err:  # DCP's read errors are BaseExceptions
        last = [ln for ln in str(err).splitlines() if ln.strip()][-1][:200]
        raise CheckpointError(f"{ckpt}: unreadable checkpoint part ({last})") from None
    return model.to(device=device, dtype=dtype).eval()
