"""Mixtral (`MixtralForCausalLM`, no custom code), for LLaMA and Mistral bases.

Written in the per-expert layout every Mixtral release uses, which transformers (4.x directly, 5.x through its
checkpoint conversion into fused `gate_up_proj`/`down_proj`) and inference engines load:
  model.layers.{i}.block_sparse_moe.gate.weight             [E, D]   router
  model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight   [F, D]   gate_proj of expert j
  model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight   [F, D]   up_proj
  model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight   [D, F]   down_proj, times the score scale s

Mixtral routes with softmax over all E logits, top-k, renormalised over the k. That equals (in eval) our
`softmax_topk`, and our `noisy_topk` with a linear gate (softmax over the top-k logits only == the full softmax
renormalised over them; the noise is training-only). Both multiply by s, which is folded into w2.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..config import ModelConfig, MoEConfig
from .dense import BACKBONE, ExportError
from .hf_config import hf_config_common
from .keys import ExpertMap, KeyMap

NAME = "mixtral"
ROUTER = KeyMap([("layers.{i}.mlp.router.gate.weight", "model.layers.{i}.block_sparse_moe.gate.weight")])
EXPERTS = ExpertMap([(f"layers.{{i}}.mlp.experts.{w}", f"model.layers.{{i}}.block_sparse_moe.experts.{{j}}.{w}.weight")
                     for w in ("w1", "w3", "w2")])
TRAINING_ONLY = ("mlp.router.noise.weight",)  # the noisy gate's noise projection: no effect in eval


def check_router(moe: MoEConfig, fmt: str) -> None:
    """Routers whose eval routing equals softmax -> top-k -> renormalise (Mixtral / Qwen2-MoE)."""
    if moe.router == "softmax_topk" or (moe.router == "noisy_topk" and moe.gate_network == "linear"):
        return
    what = f"router={moe.router}" + (f" with gate_network={moe.gate_network}" if moe.router == "noisy_topk" else "")
    if moe.router == "noisy_topk":
        alt = "use --format llama-moe, which keeps the mlp gate network"
    else:
        alt = ("no HF format reproduces it exactly; keep the megatron_moe checkpoint (megatron_moe.load_model) "
               "or, for LLaMA-MoE tooling, retrain with router noisy_topk and use --format llama-moe")
    raise ExportError(f"--format {fmt} needs a softmax top-k router (softmax_topk, or noisy_topk with a linear "
                      f"gate network) but the checkpoint has {what}; {alt}")


def check_all_routed(model: ModelConfig, moe: MoEConfig, fmt: str) -> None:
    """Formats whose every layer is a routed MoE without shared experts (Mixtral, LLaMA-MoE v1)."""
    if not moe.enabled:
        raise ExportError(f"--format {fmt} needs an MoE checkpoint but this one is dense; use --format llama")
    dense = [i for i in range(model.num_layers) if not moe.is_moe_layer(i)]
    if dense:
        raise ExportError(f"--format {fmt} needs every layer to be MoE but layers {dense} are dense; "
                          f"use --format qwen2-moe (it has mlp_only_layers)")
    if moe.num_shared_experts:
        raise ExportError(f"--format {fmt} has no shared experts but the checkpoint has {moe.num_shared_experts}; "
                          f"use --format qwen2-moe")


def check(model: ModelConfig, moe: MoEConfig) -> None:
    check_all_routed(model, moe, NAME)
    if model.qkv_bias or model.attn_out_bias:
        raise ExportError("--format mixtral has no attention biases but this model has them (a Qwen2 base); "
                          "use --format qwen2-moe")
    check_router(moe, NAME)


def hf_config(model: ModelConfig, moe: MoEConfig, dtype_name: str) -> dict:
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **hf_config_common(model, dtype_name)}
    cfg.update({"intermediate_size": moe.ffn_size(model), "num_local_experts": moe.num_experts,
                "num_experts_per_tok": moe.top_k, "router_aux_loss_coef": moe.aux_loss_coeff,
                "output_router_logits": False, "router_jitter_noise": 0.0, "sliding_window": model.sliding_window})
    return cfg


def split_experts(experts: ExpertMap, name: str, t_EXY: torch.Tensor, scale: float = 1.0) -> Iterator:
    """One (format name, tensor) per expert of a stacked canonical tensor; own storage (safetensors refuses
    shared views); `scale` multiplies each (the folded score scale)."""
    for j in range(t_EXY.shape[0]):
        w = t_EXY[j].clone()
        yield experts.theirs(name, j), w * scale if scale != 1.0 else w


def convert(name: str, t: torch.Tensor, model: ModelConfig, moe: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
    hf = BACKBONE.theirs(name) or ROUTER.theirs(name)
    if hf is not None:
        yield hf, t
    elif name.endswith(TRAINING_ONLY):
        return
    elif EXPERTS.theirs(name, 0) is not None:
        yield from split_experts(EXPERTS, name, t, float(moe.scale) if name.endswith("w2") else 1.0)
    else:
        raise ExportError(f"tensor {name!r} has no place in the mixtral format")
