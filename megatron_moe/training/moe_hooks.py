"""What the trainer needs from the MoE layers: the loss scale of a micro-batch, the once-per-step expert-bias
update of the sigmoid router, and the per-layer statistics (aux/z loss, tokens per expert) for logging.

Each MoE layer exposes `last_stats` = {aux_loss, z_loss, tokens_per_expert [E], load_cv} after a forward.
"""
from __future__ import annotations

import torch
from torch import nn

from ..parallel import ParallelState


def moe_layers(model: nn.Module) -> list[nn.Module]:
    fn = getattr(model, "moe_layers", None)
    return list(fn()) if fn is not None else []


def set_loss_scale(model: nn.Module, scale: float) -> None:
    """Tell every MoE layer the factor its aux/z losses enter the gradient with (1 / micro-batches)."""
    for layer in moe_layers(model):
        if hasattr(layer, "set_loss_scale"):
            layer.set_loss_scale(scale)
        else:
            layer.loss_scale = scale


@torch.no_grad()
def after_optimizer_step(model: nn.Module) -> None:
    """Once per optimizer step: the aux-loss-free expert-bias update of sigmoid routers."""
    for layer in moe_layers(model):
        fn = getattr(layer, "update_expert_bias", None) or getattr(getattr(layer, "router", None),
                                                                    "update_expert_bias", None)
        if fn is not None:
            fn()


class MoEStats:
    """Accumulates per-layer aux loss and tokens per expert over the micro-batches of one step."""

    def __init__(self, model: nn.Module):
        self.layers = moe_layers(model)
        self.reset()

    def reset(self) -> None:
        self.aux = [0.0] * len(self.layers)
        self.z = [0.0] * len(self.layers)
        self.load = [None] * len(self.layers)
        self.micro = 0

    def collect(self) -> None:
        self.micro += 1
        for i, layer in enumerate(self.layers):
            st = getattr(layer, "last_stats", None) or {}
            self.aux[i] += float(st.get("aux_loss", 0.0))
            self.z[i] += float(st.get("z_loss", 0.0))
            tpe = st.get("tokens_per_expert")
            if tpe is not None:
                tpe = torch.as_tensor(tpe).detach().double().cpu()
                self.load[i] = tpe if self.load[i] is None else self.load[i] + tpe

    def summary(self, ps: ParallelState) -> dict:
        """{aux_loss, z_loss, expert_load: {layer_i: {min, max, cv}}}. The layers report global statistics (already
        reduced over the ranks holding different tokens); loads are fractions of routed assignments summed over
        the step's micro-batches, so min = max = 1/E is perfect balance."""
        if not self.layers:
            return {}
        n = max(1, self.micro)
        aux, z = sum(self.aux) / n, sum(self.z) / n
        out = {"aux_loss": aux, "z_loss": z, "expert_load": {}}
        loads = [ld for ld in self.load if ld is not None]
        for layer, ld in zip(self.layers, loads):
            frac = ld / ld.sum().clamp(min=1)
            cv = float(frac.std(unbiased=False) / frac.mean()) if frac.mean() > 0 else 0.0
            idx = getattr(layer, "layer_idx", None)
            key = f"layer_{idx if idx is not None else self.layers.index(layer)}"
            out["expert_load"][key] = {"min": float(frac.min()), "max": float(frac.max()), "cv": cv}
        return out
