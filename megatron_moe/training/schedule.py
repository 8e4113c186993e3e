"""Learning-rate schedules: linear warm-up, then cosine, linear or constant decay to min_lr_ratio * lr.

    lr = lr_at(step, cfg.train)      # step = optimizer steps already taken (0-based)

warm-up:  lr * (step + 1) / warmup_steps                      for step < warmup_steps
cosine:   min + (lr - min) * 0.5 * (1 + cos(pi * p))          p = (step - warmup) / (train_steps - warmup), clamped
linear:   lr - (lr - min) * p
constant: lr
"""
from __future__ import annotations

import math

from ..config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate used for optimizer step `step` (0-based); a pure function of the config and the step."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return peak
    span = max(1, cfg.train_steps - cfg.warmup_steps)
    p = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    if cfg.lr_schedule == "linear":
        return peak - (peak - floor) * p
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
