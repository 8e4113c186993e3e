"""What the trainer tells the MoE layers, and what it reads back from them.

Per micro-batch: the loss scale of its aux/z gradient (1 / micro-batches) and the router-noise context
(model/moe/noise.py). Per step: the global-batch balance pre-pass (model/moe/balance.py) and the expert-bias
update of sigmoid routers. After each forward: `layer.last_stats` = {aux_loss, z_loss, tokens_per_expert [E],
load_cv, max_vio}, accumulated over the step's micro-batches by `MoEStats`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.moe import MoELayer
from ..model.moe.noise import NoiseContext, step_key


def moe_layers(model: nn.Module) -> list[MoELayer]:
    return [m for m in model.modules() if isinstance(m, MoELayer)]


def set_loss_scale(layers: list[MoELayer], scale: float) -> None:
    for layer in layers:
        layer.set_loss_scale(scale)


def set_noise_context(layers: list[MoELayer], seed: int, step: int, first_sample: int) -> None:
    """Noise of the micro-batch whose first sequence is global sample `first_sample` of optimizer step `step`."""
    ctx = NoiseContext(step_key(seed, step), first_sample)
    for layer in layers:
        layer.noise_context = ctx


def start_balance_collect(layers: list[MoELayer]) -> None:
    for layer in layers:
        layer.balance.start_collect()


def finish_balance_collect(layers: list[MoELayer]) -> None:
    """After the no-gradient pass: each layer's loss value and gradient at the step's global sums."""
    for layer in layers:
        layer.balance.finalize(layer.router.losses, layer.cfg.aux_loss_coeff, layer.cfg.z_loss_coeff)


def end_step(layers: list[MoELayer], taken: bool) -> None:
    """Once per optimizer step, after AdamW (`taken`) or a skipped step: sigmoid routers update their expert bias
    (taken steps only); the balance state resets."""
    with torch.no_grad():
        for layer in layers:
            if taken:
                layer.update_expert_bias()
            layer.balance.reset()


def merge_summaries(summaries: list[dict]) -> dict:
    """One MoEStats.summary from those of pipeline stages (each covers its own layers): losses summed over
    layers as within a stage, per-layer loads side by side."""
    parts = [s for s in summaries if s]
    if not parts:
        return {}
    return {"aux_loss": sum(s["aux_loss"] for s in parts), "z_loss": sum(s["z_loss"] for s in parts),
            "expert_load": {k: v for s in parts for k, v in s["expert_load"].items()}}


class MoEStats:
    """Per-layer aux loss, z loss and tokens per expert accumulated over the micro-batches of one step."""

    def __init__(self, layers: list[MoELayer]):
        self.layers = layers
        self.reset()

    def reset(self) -> None:
        self.aux = [0.0] * len(self.layers)
        self.z = [0.0] * len(self.layers)
        self.dropped = [0.0] * len(self.layers)
        self.load = [None] * len(self.layers)
        self.micro = 0

    def collect(self) -> None:
        self.micro += 1
        for i, layer in enumerate(self.layers):
            st = layer.last_stats
            self.aux[i] += float(st["aux_loss"])
            self.z[i] += float(st["z_loss"])
            self.dropped[i] += float(st.get("dropped_frac", 0.0))
            tpe = st["tokens_per_expert"].detach().double().cpu()
            self.load[i] = tpe if self.load[i] is None else self.load[i] + tpe

    def summary(self) -> dict:
        """{aux_loss, z_loss, expert_load: {layer_i: {aux_loss, z_loss, min, max, cv, max_vio, dropped_frac}}}: losses
        and dropped_frac (this rank's share of assignments over capacity) are means
        over the step's micro-batches (sums over layers at the top level); loads are fractions of the step's
        routed assignments (global: already reduced over the ranks holding different tokens), so
        min = max = 1/E and cv = max_vio = 0 is perfect balance."""
        if not self.layers:
            return {}
        n = max(1, self.micro)
        out = {"aux_loss": sum(self.aux) / n, "z_loss": sum(self.z) / n, "expert_load": {}}
        for i, layer in enumerate(self.layers):
            ld = self.load[i]
            if ld is None:
                continue
            frac = ld / ld.sum().clamp(min=1)
            mean = float(frac.mean())
            out["expert_load"][f"layer_{layer.layer_idx}"] = {
                "aux_loss": self.aux[i] / n, "z_loss": self.z[i] / n, "min": float(frac.min()),
                "max": float(frac.max()), "cv": float(frac.std(unbiased=False)) / mean if mean > 0 else 0.0,
                "max_vio": float(frac.max()) / mean - 1.0 if mean > 0 else 0.0,
                "dropped_frac": self.dropped[i] / n}
        return out
