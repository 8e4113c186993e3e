"""Expert load: how many tokens each MoE layer sends to each expert (eval routing, no noise).

The model's own routers are observed through forward hooks (their `Routing.indices_TK`), so the counts are the
model's routing decisions, with whatever router, gate network and expert bias it has.
Legend: T tokens, D hidden, E experts, K top-k, L MoE layers.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def moe_layer_indices(model: nn.Module) -> list[int]:
    return [i for i, layer in enumerate(model.layers) if hasattr(layer.mlp, "router")]


@torch.no_grad()
def expert_load(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Token counts [L, E] over `batches` of input ids (LongTensor [B, S]); L = MoE layers in order."""
    layers = [model.layers[i].mlp for i in moe_layer_indices(model)]
    if not layers:
        raise ValueError("the model has no MoE layers")
    E = model.moe_cfg.num_experts
    counts_LE = torch.zeros(len(layers), E, dtype=torch.float64)

    def hook(idx):
        def fn(_router, _args, routing):
            chosen = routing.indices_TK.flatten()
            counts_LE[idx] += torch.bincount(chosen[chosen >= 0].cpu(), minlength=E).double()
        return fn

    handles = [m.router.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            model(batch.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts_LE
