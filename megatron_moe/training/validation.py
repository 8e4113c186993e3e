"""Per-domain validation loss and perplexity (feeds dynamic domain sampling).

For each domain, `eval_iters` global validation batches of `batch_size` sequences are read (each data-parallel
rank takes its contiguous share), per-sequence mean token losses are summed, and the sums and counts are
all-reduced over the data-parallel group, so the result does not depend on the layout.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..parallel import ParallelState, all_reduce_


@torch.no_grad()
def validate(model: nn.Module, data, ps: ParallelState, batch_size: int, num_batches: int,
             autocast=contextlib.nullcontext, device=None) -> dict[str, float]:
    """{domain: mean validation loss}; `batch_size` is global (divisible by dp), `data` a MultiDomainData;
    `device` where the batches go (default: the first parameter's)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    names = list(data.domain_names)
    sums = torch.zeros(2, len(names), dtype=torch.float64, device=device)
    try:
        for i, name in enumerate(names):
            for tokens in data.valid_batches(name, num_batches, batch_size):
                tokens = tokens.to(device)
                with autocast():
                    _, per_seq_B = model.loss(tokens[:, :-1], tokens[:, 1:])
                sums[0, i] += per_seq_B.double().sum()
                sums[1, i] += per_seq_B.shape[0]
    finally:
        model.train(was_training)
    all_reduce_(sums, ps.dp_group)
    return {n: float(sums[0, i] / sums[1, i]) for i, n in enumerate(names)}


def perplexities(losses: dict[str, float]) -> dict[str, float]:
    return {d: math.exp(min(v, 80.0)) for d, v in losses.items()}
