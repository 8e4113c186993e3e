"""Expert load: how many tokens each MoE layer sends to each expert (eval routing, no noise).

Routing is recomputed from the router weights under their canonical names (docs/checkpoint_format.md) on the
MoE layer's input, captured by a forward pre-hook, so it does not depend on the layer's internals:
  noisy_topk / softmax_topk / switch: top-k of the gate logits (top-k of softmax == top-k of logits)
  sigmoid: top-k of sigmoid(logits) + expert_bias
Legend: T tokens, D hidden, E experts, K top-k, L MoE layers.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..config import MoEConfig


def gate_logits(router_sd: dict[str, torch.Tensor], x_TD: torch.Tensor) -> torch.Tensor:
    """[T, E] logits of a linear (`gate.weight`) or mlp (`gate.0.weight`, `gate.2.weight`) gate network."""
    x_TD = x_TD.float()
    if "gate.weight" in router_sd:
        return x_TD @ router_sd["gate.weight"].float().t()
    h_TE = torch.tanh(x_TD @ router_sd["gate.0.weight"].float().t())
    return h_TE @ router_sd["gate.2.weight"].float().t()


def select_experts(router_sd: dict[str, torch.Tensor], x_TD: torch.Tensor, moe_cfg: MoEConfig) -> torch.Tensor:
    """[T, K] expert indices chosen in eval."""
    logits_TE = gate_logits(router_sd, x_TD)
    if moe_cfg.router == "sigmoid":
        bias_E = router_sd.get("expert_bias")
        logits_TE = torch.sigmoid(logits_TE) + (bias_E.float() if bias_E is not None else 0.0)
    return logits_TE.topk(moe_cfg.top_k, dim=-1).indices


def _router_state(mlp: nn.Module) -> dict[str, torch.Tensor]:
    return {k[len("router."):]: v for k, v in mlp.state_dict().items() if k.startswith("router.")}


@torch.no_grad()
def expert_load(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Token counts [L, E] over `batches` of input ids (LongTensor [B, S]); L = MoE layers in order."""
    moe_cfg = model.moe_cfg
    layers = [model.layers[i].mlp for i in moe_layer_indices(model)]
    if not layers:
        raise ValueError("the model has no MoE layers")
    counts_LE = torch.zeros(len(layers), moe_cfg.num_experts, dtype=torch.float64)
    states = [_router_state(m) for m in layers]

    def hook(idx):
        def fn(_module, args):
            x_TD = args[0].reshape(-1, args[0].shape[-1])
            chosen_TK = select_experts(states[idx], x_TD, moe_cfg)
            counts_LE[idx] += torch.bincount(chosen_TK.flatten().cpu(), minlength=moe_cfg.num_experts).double()
        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        for batch in batches:
            ids = batch.to(device)
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return counts_LE


def moe_layer_indices(model: nn.Module) -> list[int]:
    return [i for i, layer in enumerate(model.layers) if any(k.startswith("router.") for k in layer.mlp.state_dict())]
