"""Per-domain validation loss and perplexity (feeds dynamic domain sampling).

For each domain, `eval_iters` global validation batches of `batch_size` sequences are read (each data-parallel
rank takes its contiguous share), per-sequence mean token losses are summed, and the sums and counts are
all-reduced over the data-parallel group, so the result does not depend on the layout. With pipeline parallelism
a domain's batches are the micro-batches of one forward-only pipeline pass; the losses arrive on the last stage
and the sums are also all-reduced over the pipeline group.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..parallel import ParallelState, all_reduce_


@torch.no_grad()
def validate(model: nn.Module, data, ps: ParallelState, batch_size: int, num_batches: int,
             autocast=contextlib.nullcontext, device=None, pipeline=None) -> dict[str, float]:
    """{domain: mean validation loss}; `batch_size` is global (divisible by dp), `data` a MultiDomainData;
    `device` where the batches go (default: the first parameter's); `pipeline` the trainer's PipelineRunner
    when parallel.pp > 1."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    names = list(data.domain_names)
    sums = torch.zeros(2, len(names), dtype=torch.float64, device=device)
    try:
        for i, name in enumerate(names):
            batches = list(data.valid_batches(name, num_batches, batch_size))
            if pipeline is not None and batches:
                per_seq = [pipeline.eval_losses(torch.cat(batches), len(batches))]
            else:
                per_seq = [_per_seq(model, tokens.to(device), autocast) for tokens in batches]
            for per_seq_B in per_seq:
                if per_seq_B is not None:  # None: a pipeline stage other than the last
                    sums[0, i] += per_seq_B.double().sum()
                    sums[1, i] += per_seq_B.shape[0]
    finally:
        model.train(was_training)
    all_reduce_(sums, ps.dp_group)
    all_reduce_(sums, ps.pp_group)
    return {n: float(sums[0, i] / sums[1, i]) for i, n in enumerate(names)}


def _per_seq(model: nn.Module, tokens_BS1: torch.Tensor, autocast) -> torch.Tensor:
    with autocast():
        return model.loss(tokens_BS1[:, :-1], tokens_BS1[:, 1:])[1]


def perplexities(losses: dict[str, float]) -> dict[str, float]:
    return {d: math.exp(min(v, 80.0)) for d, v in losses.items()}
