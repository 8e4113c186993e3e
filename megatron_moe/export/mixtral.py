"""Mixtral export (`MixtralForCausalLM`, no custom code).

Written in the per-expert layout every Mixtral release uses, which transformers (4.x directly, 5.x through its
checkpoint conversion mapping into fused `gate_up_proj`/`down_proj`) and inference engines load:
  model.layers.{i}.block_sparse_moe.gate.weight          [E, D]   router
  model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight [F, D]   gate_proj of expert j
  model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight [F, D]   up_proj
  model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight [D, F]   down_proj, times the score scale s

Mixtral routes with softmax over all E logits, top-k, renormalised over the k. That equals (in eval) our
`softmax_topk`, and our `noisy_topk` with a linear gate (softmax over the top-k logits only == the full softmax
renormalised over them; the noise is training-only). Both multiply by s, which is folded into w2.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..config import ModelConfig, MoEConfig
from .common import LAYER_RE, ExportError, backbone_to_hf, base_hf_config

NAME = "mixtral"
LEGEND = "E experts, F expert FFN, D hidden"


def check_router(moe_cfg: MoEConfig, fmt: str) -> None:
    """Routers whose eval routing equals softmax -> top-k -> renormalise (Mixtral / Qwen2-MoE)."""
    if moe_cfg.router == "softmax_topk":
        return
    if moe_cfg.router == "noisy_topk" and moe_cfg.gate_network == "linear":
        return
    what = f"router={moe_cfg.router}" + (f" with gate_network={moe_cfg.gate_network}"
                                         if moe_cfg.router == "noisy_topk" else "")
    if moe_cfg.router == "noisy_topk":
        alt = "use --format llama-moe, which keeps the mlp gate network"
    else:
        alt = ("no HF format reproduces it exactly; keep the megatron_moe checkpoint (megatron_moe.load_model) "
               "or, for LLaMA-MoE tooling, retrain with router noisy_topk and use --format llama-moe")
    raise ExportError(f"--format {fmt} needs a softmax top-k router (softmax_topk, or noisy_topk with a linear "
                      f"gate network) but the checkpoint has {what}; {alt}")


def check(model_cfg: ModelConfig, moe_cfg: MoEConfig) -> None:
    if not moe_cfg.enabled:
        raise ExportError("--format mixtral needs an MoE checkpoint but this one is dense; use --format llama")
    dense = [i for i in range(model_cfg.num_layers) if not moe_cfg.is_moe_layer(i)]
    if dense:
        raise ExportError(f"--format mixtral needs every layer to be MoE but layers {dense} are dense; "
                          f"use --format qwen2-moe (it has mlp_only_layers)")
    if moe_cfg.num_shared_experts:
        raise ExportError(f"--format mixtral has no shared experts but the checkpoint has "
                          f"{moe_cfg.num_shared_experts}; use --format qwen2-moe")
    check_router(moe_cfg, NAME)


def rope_fields(model_cfg: ModelConfig) -> dict:
    params = {"rope_type": "default", "rope_theta": model_cfg.rope_theta}
    if model_cfg.rope_scaling:
        params = {**model_cfg.rope_scaling, "rope_theta": model_cfg.rope_theta}
        params.setdefault("rope_type", params.get("type", "default"))
    return {"rope_theta": model_cfg.rope_theta, "rope_parameters": params}


def hf_config(model_cfg: ModelConfig, moe_cfg: MoEConfig, dtype: torch.dtype) -> dict:
    cfg = base_hf_config(model_cfg, dtype)
    for k in ("rope_scaling", "mlp_bias", "attention_bias"):
        cfg.pop(k, None)
    cfg.update(rope_fields(model_cfg))
    cfg.update({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "intermediate_size": moe_cfg.ffn_size(model_cfg), "num_local_experts": moe_cfg.num_experts,
                "num_experts_per_tok": moe_cfg.top_k, "router_aux_loss_coef": moe_cfg.aux_loss_coeff,
                "output_router_logits": False, "router_jitter_noise": 0.0, "sliding_window": None,
                "head_dim": model_cfg.head_dim})
    return cfg


def experts_per_index(t_EXY: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for j in range(t_EXY.shape[0]):
        yield j, t_EXY[j].clone()  # own storage: safetensors refuses shared views


def convert(name: str, t: torch.Tensor, model_cfg: ModelConfig, moe_cfg: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
    hf = backbone_to_hf(name)
    if hf is not None:
        yield hf, t
        return
    m = LAYER_RE.fullmatch(name)
    rest = m.group(2) if m else ""
    pre = f"model.layers.{m.group(1)}.block_sparse_moe." if m else ""
    if rest == "mlp.router.gate.weight":
        yield pre + "gate.weight", t
    elif rest == "mlp.router.noise.weight":
        return  # training-only noise: no eval effect
    elif rest in ("mlp.experts.w1", "mlp.experts.w3"):
        which = rest[-2:]
        for j, w_FD in experts_per_index(t):
            yield f"{pre}experts.{j}.{which}.weight", w_FD
    elif rest == "mlp.experts.w2":
        s = float(moe_cfg.scale)
        for j, w_DF in experts_per_index(t):
            yield f"{pre}experts.{j}.w2.weight", w_DF * s
    else:
        raise ExportError(f"tensor {name!r} has no place in the mixtral format")
