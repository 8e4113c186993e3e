"""Qwen2-MoE (`Qwen2MoeForCausalLM`, no custom code): Qwen2 bases (q/k/v biases), shared experts, dense layers.

  model.layers.{i}.self_attn.{q,k,v}_proj.bias                      always written (zeros for a base without them)
  model.layers.{i}.mlp.gate.weight                        [E, D]   router (softmax -> top-k -> renormalise)
  model.layers.{i}.mlp.experts.{j}.{gate,up,down}_proj.weight       routed experts, down_proj times s
  model.layers.{i}.mlp.shared_expert.{gate,up,down}_proj.weight     all shared experts concatenated (Fs wide)
  model.layers.{i}.mlp.shared_expert_gate.weight          [1, D]   zeros
  model.layers.{i}.mlp.{gate,up,down}_proj.weight                   dense layers, listed in mlp_only_layers

Qwen2-MoE multiplies the shared expert by sigmoid(x · w_gate); ours are always on (times shared_expert_scale).
The gate has no bias, so no w_gate makes the sigmoid exactly 1 for every x. We set w_gate = 0, which makes it
exactly sigmoid(0) = 0.5 for every token, and multiply the shared down_proj by 2 · shared_expert_scale
(a power-of-two factor: exact in floating point when the scale is 1). A model without shared experts gets a
shared expert of width 1 whose down_proj is zero (it adds exactly 0), since Qwen2-MoE always has one.
The exported model computes the same function; fine-tuning it in HF will also learn the shared gate.
q/k/v biases are written (as zeros for a LLaMA base) with qkv_bias=true, the layout every Qwen2-MoE loader expects.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..config import ModelConfig, MoEConfig
from .dense import BACKBONE, DENSE_MLP, ExportError
from .hf_config import hf_config_common
from .keys import ExpertMap, KeyMap
from .mixtral import TRAINING_ONLY, check_router, split_experts

NAME = "qwen2-moe"
ROUTER = KeyMap([("layers.{i}.mlp.router.gate.weight", "model.layers.{i}.mlp.gate.weight")])
EXPERTS = ExpertMap([("layers.{i}.mlp.experts.w1", "model.layers.{i}.mlp.experts.{j}.gate_proj.weight"),
                     ("layers.{i}.mlp.experts.w3", "model.layers.{i}.mlp.experts.{j}.up_proj.weight"),
                     ("layers.{i}.mlp.experts.w2", "model.layers.{i}.mlp.experts.{j}.down_proj.weight")])
SHARED = KeyMap([("layers.{i}.mlp.shared.w1.weight", "model.layers.{i}.mlp.shared_expert.gate_proj.weight"),
                 ("layers.{i}.mlp.shared.w3.weight", "model.layers.{i}.mlp.shared_expert.up_proj.weight"),
                 ("layers.{i}.mlp.shared.w2.weight", "model.layers.{i}.mlp.shared_expert.down_proj.weight")])
SHARED_GATE = "model.layers.{i}.mlp.shared_expert_gate.weight"


def check(model: ModelConfig, moe: MoEConfig) -> None:
    if not moe.enabled:
        raise ExportError("--format qwen2-moe needs an MoE checkpoint but this one is dense; use --format qwen2")
    if model.attn_out_bias:
        raise ExportError("--format qwen2-moe has no attention output bias but this model has one")
    check_router(moe, NAME)


def shared_ffn_size(model: ModelConfig, moe: MoEConfig) -> int:
    return moe.num_shared_experts * (moe.shared_expert_ffn_size or moe.ffn_size(model))


def hf_config(model: ModelConfig, moe: MoEConfig, dtype_name: str) -> dict:
    cfg = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", **hf_config_common(model, dtype_name)}
    cfg.update({"qkv_bias": True, "moe_intermediate_size": moe.ffn_size(model),
                "shared_expert_intermediate_size": shared_ffn_size(model, moe) or 1,
                "num_experts": moe.num_experts, "num_experts_per_tok": moe.top_k, "norm_topk_prob": True,
                "decoder_sparse_step": 1, "use_sliding_window": bool(model.sliding_window),
                "sliding_window": model.sliding_window,
                "max_window_layers": 0 if model.sliding_window else model.num_layers, "output_router_logits": False,
                "mlp_only_layers": [i for i in range(model.num_layers) if not moe.is_moe_layer(i)],
                "router_aux_loss_coef": moe.aux_loss_coeff})
    return cfg


def _layer(name: str) -> str:
    return name.split(".")[1]


def convert(name: str, t: torch.Tensor, model: ModelConfig, moe: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
    hf = BACKBONE.theirs(name) or DENSE_MLP.theirs(name) or ROUTER.theirs(name)
    if hf is not None:
        yield hf, t
        if not model.qkv_bias and name.endswith(("attn.wq.weight", "attn.wk.weight", "attn.wv.weight")):
            yield BACKBONE.theirs(name[:-len("weight")] + "bias"), t.new_zeros(t.shape[0])
        if not moe.num_shared_experts and name.endswith("mlp.router.gate.weight"):
            i, D = _layer(name), t.shape[1]  # the width-1 shared expert that adds exactly zero
            for k, shape in (("w1", (1, D)), ("w3", (1, D)), ("w2", (D, 1))):
                yield SHARED.theirs(f"layers.{i}.mlp.shared.{k}.weight"), t.new_zeros(shape)
            yield SHARED_GATE.format(i=i), t.new_zeros(1, D)
    elif name.endswith(TRAINING_ONLY):
        return
    elif EXPERTS.theirs(name, 0) is not None:
        yield from split_experts(EXPERTS, name, t, float(moe.scale) if name.endswith("w2") else 1.0)
    elif SHARED.theirs(name) is not None:
        if name.endswith("shared.w2.weight"):
            yield SHARED.theirs(name), t * (2.0 * moe.shared_expert_scale)
            yield SHARED_GATE.format(i=_layer(name)), t.new_zeros(1, t.shape[0])
        else:
            yield SHARED.theirs(name), t
    else:
        raise ExportError(f"tensor {name!r} has no place in the qwen2-moe format")
