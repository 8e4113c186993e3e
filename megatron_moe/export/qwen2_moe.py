"""Qwen2-MoE export (`Qwen2MoeForCausalLM`, no custom code), for models with shared experts (Sharing-Inter).

  model.layers.{i}.mlp.gate.weight                        [E, D]   router (softmax -> top-k -> renormalise)
  model.layers.{i}.mlp.experts.{j}.{gate,up,down}_proj.weight       routed experts, down_proj times s
  model.layers.{i}.mlp.shared_expert.{gate,up,down}_proj.weight     all shared experts concatenated (Fs wide)
  model.layers.{i}.mlp.shared_expert_gate.weight          [1, D]   zeros
  model.layers.{i}.mlp.{gate,up,down}_proj.weight                   dense layers, listed in mlp_only_layers

Qwen2-MoE multiplies the shared expert by sigmoid(x · w_gate); ours are always on (times shared_expert_scale).
The gate has no bias, so no w_gate makes the sigmoid exactly 1 for every x. We set w_gate = 0, which makes it
exactly sigmoid(0) = 0.5 for every token, and multiply the shared down_proj by 2 · shared_expert_scale
(a power-of-two factor: exact in floating point when the scale is 1). The exported model computes the same
function; fine-tuning it in HF will then also learn the shared gate, which ours does not have.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..config import ModelConfig, MoEConfig
from .common import LAYER_RE, ExportError, backbone_to_hf, base_hf_config
from .llama import dense_mlp_to_hf
from .mixtral import check_router, experts_per_index, rope_fields

NAME = "qwen2-moe"
_SHARED = {"mlp.shared.w1.weight": "gate_proj", "mlp.shared.w3.weight": "up_proj", "mlp.shared.w2.weight": "down_proj"}
_ROUTED = {"mlp.experts.w1": "gate_proj", "mlp.experts.w3": "up_proj", "mlp.experts.w2": "down_proj"}


def check(model_cfg: ModelConfig, moe_cfg: MoEConfig) -> None:
    if not moe_cfg.enabled:
        raise ExportError("--format qwen2-moe needs an MoE checkpoint but this one is dense; use --format llama")
    if not moe_cfg.num_shared_experts:
        raise ExportError("--format qwen2-moe is for models with shared experts and this one has none; "
                          "use --format mixtral")
    check_router(moe_cfg, NAME)


def shared_ffn_size(model_cfg: ModelConfig, moe_cfg: MoEConfig) -> int:
    return moe_cfg.num_shared_experts * (moe_cfg.shared_expert_ffn_size or moe_cfg.ffn_size(model_cfg))


def hf_config(model_cfg: ModelConfig, moe_cfg: MoEConfig, dtype: torch.dtype) -> dict:
    cfg = base_hf_config(model_cfg, dtype)
    for k in ("rope_scaling", "mlp_bias", "attention_bias"):
        cfg.pop(k, None)
    cfg.update(rope_fields(model_cfg))
    cfg.update({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "qkv_bias": False,
                "moe_intermediate_size": moe_cfg.ffn_size(model_cfg),
                "shared_expert_intermediate_size": shared_ffn_size(model_cfg, moe_cfg),
                "num_experts": moe_cfg.num_experts, "num_experts_per_tok": moe_cfg.top_k, "norm_topk_prob": True,
                "decoder_sparse_step": 1, "use_sliding_window": False, "output_router_logits": False,
                "mlp_only_layers": [i for i in range(model_cfg.num_layers) if not moe_cfg.is_moe_layer(i)],
                "router_aux_loss_coef": moe_cfg.aux_loss_coeff})
    return cfg


def convert(name: str, t: torch.Tensor, model_cfg: ModelConfig, moe_cfg: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
    hf = backbone_to_hf(name) or dense_mlp_to_hf(name)
    if hf is not None:
        yield hf, t
        return
    m = LAYER_RE.fullmatch(name)
    rest = m.group(2) if m else ""
    pre = f"model.layers.{m.group(1)}.mlp." if m else ""
    if rest == "mlp.router.gate.weight":
        yield pre + "gate.weight", t
    elif rest == "mlp.router.noise.weight":
        return  # training-only noise
    elif rest in _ROUTED:
        s = float(moe_cfg.scale) if rest.endswith("w2") else 1.0
        for j, w in experts_per_index(t):
            yield f"{pre}experts.{j}.{_ROUTED[rest]}.weight", w * s if s != 1.0 else w
    elif rest in _SHARED:
        if rest == "mlp.shared.w2.weight":
            yield f"{pre}shared_expert.down_proj.weight", t * (2.0 * moe_cfg.shared_expert_scale)
            yield f"{pre}shared_expert_gate.weight", torch.zeros(1, t.shape[0], dtype=t.dtype)
        else:
            yield f"{pre}shared_expert.{_SHARED[rest]}.weight", t
    else:
        raise ExportError(f"tensor {name!r} has no place in the qwen2-moe format")
