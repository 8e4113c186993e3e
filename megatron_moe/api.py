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
    from .checkpoint import load_into, resolve
    from .checkpoint.verify import verify_checkpoint
    from .config import Config
    from .model import build_model

    ckpt = resolve(path)
    model_cfg, moe_cfg, _ = verify_checkpoint(ckpt)
    model = build_model(Config(model=model_cfg, moe=moe_cfg), recompute=False)
    load_into(model, ckpt)
    return model.to(device=device, dtype=dtype).eval()
