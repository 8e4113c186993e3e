"""The dense LLaMA-family HF formats (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): one key table,
read by `HFDenseReader` (import, convert) and written by the dense exports.

All three store the same tensors under the same names; they differ only in config fields (hf_config.py) and in
which biases exist: Qwen2 has q/k/v biases, LLaMA has q/k/v/o biases when attention_bias is set, Mistral none.
A tied model stores no lm_head.weight.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch

from ..config import ModelConfig, MoEConfig
from ..errors import CheckpointError, UserError
from .hf_config import ARCHITECTURES, hf_config_common, model_config_from_hf
from .hf_files import HFTensors, read_json
from .keys import KeyMap

BACKBONE = KeyMap([
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    *[(f"layers.{{i}}.attn.w{o}.{kind}", f"model.layers.{{i}}.self_attn.{o}_proj.{kind}")
      for o in "qkvo" for kind in ("weight", "bias")],
])
"""Every tensor outside the MLP, for all LLaMA-family formats (dense and MoE)."""
DENSE_MLP = KeyMap([("layers.{i}.mlp.w1.weight", "model.layers.{i}.mlp.gate_proj.weight"),
                    ("layers.{i}.mlp.w3.weight", "model.layers.{i}.mlp.up_proj.weight"),
                    ("layers.{i}.mlp.w2.weight", "model.layers.{i}.mlp.down_proj.weight")])
DENSE = BACKBONE + DENSE_MLP


class ExportError(UserError):
    """A checkpoint that cannot be written in the asked format (the message names the alternative)."""


HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def canonical_shapes(model: ModelConfig, moe: MoEConfig = MoEConfig(), names: Optional[Iterable[str]] = None,
                     where: str = "", pattern: re.Pattern = HF_LAYER) -> dict[str, tuple]:
    """Canonical name -> global shape, from the model itself (built on the meta device, nothing allocated).
    With the source's tensor `names`, first checks that the config's layer count is the one the files hold, so
    that a config implying an absurd model is refused before anything is built (checkpoint/verify.py)."""
    from ..checkpoint.verify import check_layer_count, implied_shapes

    if names is not None:
        check_layer_count(model.num_layers, names, where, "num_hidden_layers", pattern)
    return implied_shapes(model, moe)


class HFDenseReader:
    """Stream the tensors of a dense HF LLaMA / Mistral / Qwen2 directory by canonical name (shape-checked)."""

    def __init__(self, path: str | Path, ignore: Iterable[str] = ()):
        self.path = Path(path)
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{self.path}: no config.json (not an HF checkpoint directory)")
        self.hf_config = read_json(cfg_file)
        self.family = self.hf_config.get("model_type")
        self.config = model_config_from_hf(self.hf_config, str(cfg_file), ignore)
        self.files = HFTensors(self.path)
        self.shapes = canonical_shapes(self.config, names=self.files.names(), where=str(cfg_file))
        missing = [n for n in self.shapes if DENSE.theirs(n) not in self.files]
        if missing:
            raise CheckpointError(f"{self.path}: checkpoint lacks {len(missing)} tensors, e.g. "
                                  f"{DENSE.theirs(missing[0])!r}")

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str) -> torch.Tensor:
        """The canonical tensor `name` (dtype as stored), checked against the shape config.json implies."""
        theirs = DENSE.theirs(name)
        if theirs is None or name not in self.shapes:
            raise CheckpointError(f"{self.path}: no tensor {name!r} in a model with this config")
        t = self.files.get(theirs)
        if tuple(t.shape) != self.shapes[name]:
            raise CheckpointError(f"{self.files.files[theirs]}: {theirs} has shape {tuple(t.shape)} but config.json "
                                  f"implies {self.shapes[name]}")
        return t

    def release(self) -> None:
        self.files.release()


# ------------------------------------------------------------------------------------------- export
def _check_dense(model: ModelConfig, moe: MoEConfig, family: str) -> None:
    if moe.enabled:
        raise ExportError(f"--format {family} needs a dense checkpoint but this one has moe.num_experts="
                          f"{moe.num_experts}; use --format mixtral, qwen2-moe or llama-moe")
    if family == "mistral" and (model.qkv_bias or model.attn_out_bias):
        raise ExportError("--format mistral has no attention biases but this model has them; use --format "
                          + ("qwen2" if not model.attn_out_bias else "llama"))
    if family == "llama" and model.qkv_bias != model.attn_out_bias:
        raise ExportError("--format llama has biases on q/k/v/o together or none, but this model has q/k/v biases "
                          "only (a Qwen2 base); use --format qwen2")
    if family == "qwen2" and model.attn_out_bias:
        raise ExportError("--format qwen2 has no attention output bias but this model has one; use --format llama")
    if family == "llama" and model.sliding_window:
        raise ExportError(f"--format llama has no sliding window but this model has {model.sliding_window}; "
                          f"use --format mistral")


def dense_hf_config(model: ModelConfig, family: str, dtype_name: str) -> dict:
    cfg = {"architectures": [ARCHITECTURES[family]], "model_type": family, **hf_config_common(model, dtype_name)}
    if family == "llama":
        cfg.update(attention_bias=model.qkv_bias, mlp_bias=False)
    elif family == "mistral":
        cfg.update(sliding_window=model.sliding_window)
    else:
        cfg.update(use_sliding_window=bool(model.sliding_window), sliding_window=model.sliding_window,
                   max_window_layers=0 if model.sliding_window else model.num_layers)
    return cfg


class DenseExport:
    """Export adapter of one dense family (`--format llama | mistral | qwen2`)."""

    def __init__(self, family: str):
        self.name = family

    def check(self, model: ModelConfig, moe: MoEConfig) -> None:
        _check_dense(model, moe, self.name)

    def hf_config(self, model: ModelConfig, moe: MoEConfig, dtype_name: str) -> dict:
        return dense_hf_config(model, self.name, dtype_name)

    def convert(self, name: str, t: torch.Tensor, model: ModelConfig, moe: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
        theirs = DENSE.theirs(name)
        if theirs is None:
            raise ExportError(f"tensor {name!r} has no place in the {self.name} format")
        yield theirs, t
        if self.name == "qwen2" and not model.qkv_bias and name.endswith(("attn.wq.weight", "attn.wk.weight",
                                                                        "attn.wv.weight")):
            yield DENSE.theirs(name[:-len("weight")] + "bias"), t.new_zeros(t.shape[0])  # Qwen2 always has them
