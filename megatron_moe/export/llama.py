"""Dense LLaMA export (`LlamaForCausalLM`): the canonical names map one to one onto HF names."""
from __future__ import annotations

from typing import Iterator

import torch

from ..config import ModelConfig, MoEConfig
from .common import LAYER_RE, ExportError, backbone_to_hf, base_hf_config

NAME = "llama"
_DENSE_MLP = {"mlp.w1.weight": "mlp.gate_proj.weight", "mlp.w3.weight": "mlp.up_proj.weight",
              "mlp.w2.weight": "mlp.down_proj.weight"}


def check(model_cfg: ModelConfig, moe_cfg: MoEConfig) -> None:
    if moe_cfg.enabled:
        raise ExportError(f"--format llama needs a dense checkpoint but this one has moe.num_experts="
                          f"{moe_cfg.num_experts}; use --format mixtral, qwen2-moe or llama-moe")


def hf_config(model_cfg: ModelConfig, moe_cfg: MoEConfig, dtype: torch.dtype) -> dict:
    return base_hf_config(model_cfg, dtype)


def dense_mlp_to_hf(name: str) -> str | None:
    """HF name of a dense-layer MLP tensor (`layers.i.mlp.w1.weight` -> `...mlp.gate_proj.weight`)."""
    m = LAYER_RE.fullmatch(name)
    if m and m.group(2) in _DENSE_MLP:
        return f"model.layers.{m.group(1)}.{_DENSE_MLP[m.group(2)]}"
    return None


def convert(name: str, t: torch.Tensor, model_cfg: ModelConfig, moe_cfg: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
    hf = backbone_to_hf(name) or dense_mlp_to_hf(name)
    if hf is None:
        raise ExportError(f"tensor {name!r} has no place in the llama format")
    yield hf, t
