"""The LLaMA-MoE v1 HF layout, out and in (released LLaMA-MoE models load into our format to train further).

  model.layers.{i}.mlp.gate.gate_network.weight             [E, D]  linear gate network
  model.layers.{i}.mlp.gate.gate_network.{0,2}.weight       [E, D], [E, E]  mlp gate (Linear -> Tanh -> Linear)
  model.layers.{i}.mlp.gate.weight_noise.weight             [E, D]  noise weights (when gate_add_noise)
  model.layers.{i}.mlp.calculator.experts.weight_gate.{j}   [F, D]
  model.layers.{i}.mlp.calculator.experts.weight_up.{j}     [F, D]
  model.layers.{i}.mlp.calculator.experts.weight_down.{j}   [D, F]
config.json: model_type llama_moe, num_experts, num_selects, size_experts (per layer, per expert),
gate_type TopKBalancedNoisyGate, gate_network, gate_add_noise, gate_noise_epsilon, gate_use_balance,
gate_balance_loss_weight, calculator_type UniversalCalculator, multiply_gate_scores, score_scale_factor.
Nothing is folded: the score scale stays in the config, and the router (gate network and noise) is kept.
Loading it in transformers needs the LLaMA-MoE modeling code (trust_remote_code); see docs/export.md.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Optional

import torch

from ..config import Config, ModelConfig, MoEConfig
from ..errors import CheckpointError
from .common import LAYER_RE, ExportError, HFTensors, backbone_from_hf, backbone_to_hf, base_hf_config, copy_tokenizer

log = logging.getLogger(__name__)
NAME = "llama-moe"
_EXPERTS = {"mlp.experts.w1": "weight_gate", "mlp.experts.w3": "weight_up", "mlp.experts.w2": "weight_down"}
_ROUTER = {"mlp.router.gate.weight": "gate.gate_network.weight", "mlp.router.gate.0.weight": "gate.gate_network.0.weight",
           "mlp.router.gate.2.weight": "gate.gate_network.2.weight", "mlp.router.noise.weight": "gate.weight_noise.weight"}


# ------------------------------------------------------------------------------------------------ export
def check(model_cfg: ModelConfig, moe_cfg: MoEConfig) -> None:
    if not moe_cfg.enabled:
        raise ExportError("--format llama-moe needs an MoE checkpoint but this one is dense; use --format llama")
    dense = [i for i in range(model_cfg.num_layers) if not moe_cfg.is_moe_layer(i)]
    if dense:
        raise ExportError(f"--format llama-moe needs every layer to be MoE but layers {dense} are dense; "
                          f"use --format qwen2-moe")
    if moe_cfg.num_shared_experts:
        raise ExportError("--format llama-moe (v1) has no shared experts; use --format qwen2-moe")
    if moe_cfg.router not in ("noisy_topk", "softmax_topk"):
        raise ExportError(f"--format llama-moe holds a TopKBalancedNoisyGate router but the checkpoint has "
                          f"router={moe_cfg.router}; no HF format reproduces it exactly, keep the megatron_moe "
                          f"checkpoint (megatron_moe.load_model)")


def _add_noise(moe_cfg: MoEConfig) -> bool:
    return moe_cfg.router == "noisy_topk" and moe_cfg.noisy_gate


def hf_config(model_cfg: ModelConfig, moe_cfg: MoEConfig, dtype: torch.dtype) -> dict:
    cfg = base_hf_config(model_cfg, dtype)
    F, E = moe_cfg.ffn_size(model_cfg), moe_cfg.num_experts
    cfg.update({"architectures": ["LlamaMoEForCausalLM"], "model_type": "llama_moe", "intermediate_size": E * F,
                "num_experts": E, "num_selects": moe_cfg.top_k, "size_experts": [[F] * E for _ in range(model_cfg.num_layers)],
                "gate_type": "TopKBalancedNoisyGate",
                "gate_network": moe_cfg.gate_network if moe_cfg.router == "noisy_topk" else "linear",
                "gate_use_softmax": True, "gate_use_balance": moe_cfg.aux_loss_coeff > 0,
                "gate_balance_loss_weight": moe_cfg.aux_loss_coeff, "gate_add_noise": _add_noise(moe_cfg),
                "gate_noise_epsilon": moe_cfg.noise_epsilon, "calculator_type": "UniversalCalculator",
                "multiply_gate_scores": True, "score_scale_factor": float(moe_cfg.scale), "add_weight_norm": False,
                "pretraining_tp": 1, "megatron_moe_router": moe_cfg.router})
    return cfg


def convert(name: str, t: torch.Tensor, model_cfg: ModelConfig, moe_cfg: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
    hf = backbone_to_hf(name)
    if hf is not None:
        yield hf, t
        return
    m = LAYER_RE.fullmatch(name)
    rest = m.group(2) if m else ""
    pre = f"model.layers.{m.group(1)}.mlp." if m else ""
    if rest in _EXPERTS:
        for j in range(t.shape[0]):
            yield f"{pre}calculator.experts.{_EXPERTS[rest]}.{j}", t[j].clone()
    elif rest == "mlp.router.noise.weight":
        if _add_noise(moe_cfg):
            yield pre + _ROUTER[rest], t
    elif rest in _ROUTER:
        yield pre + _ROUTER[rest], t
    else:
        raise ExportError(f"tensor {name!r} has no place in the llama-moe format")


# ------------------------------------------------------------------------------------------------ import
def configs_from_llama_moe(hf: dict, where: str = "config.json") -> tuple[ModelConfig, MoEConfig]:
    """Our model + moe config for a LLaMA-MoE v1 config.json; unsupported variants raise CheckpointError."""
    from ..construct.hf_llama import model_config_from_hf

    if hf.get("model_type") != "llama_moe":
        raise CheckpointError(f"{where}: model_type is {hf.get('model_type')!r}, expected 'llama_moe'")
    for key, want in (("gate_type", "TopKBalancedNoisyGate"), ("calculator_type", "UniversalCalculator"),
                      ("gate_use_softmax", True), ("multiply_gate_scores", True), ("add_weight_norm", False)):
        if hf.get(key, want) != want:
            raise CheckpointError(f"{where}: {key}={hf.get(key)!r} is not supported (only {want!r})")
    E, k = int(hf["num_experts"]), int(hf["num_selects"])
    L, ffn = int(hf["num_hidden_layers"]), int(hf["intermediate_size"])
    sizes = hf.get("size_experts")
    flat = sorted({int(s) for layer in sizes for s in layer}) if sizes else [ffn // E]
    if len(flat) != 1 or (sizes and (len(sizes) != L or any(len(layer) != E for layer in sizes))):
        raise CheckpointError(f"{where}: size_experts must give {E} equal experts in each of {L} layers, "
                              f"got sizes {flat[:4]}")
    model_cfg = model_config_from_hf({**hf, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}, where)
    model_cfg.intermediate_size = E * flat[0]
    router = hf.get("megatron_moe_router", "noisy_topk")
    moe_cfg = MoEConfig(num_experts=E, top_k=k, expert_ffn_size=flat[0], router=router,
                        gate_network=str(hf.get("gate_network", "mlp")).lower() if router == "noisy_topk" else "linear",
                        score_scale=float(hf.get("score_scale_factor", 1.0)),
                        aux_loss_coeff=float(hf.get("gate_balance_loss_weight", 1e-2)) if hf.get("gate_use_balance", True) else 0.0,
                        noisy_gate=bool(hf.get("gate_add_noise", True)),
                        noise_epsilon=float(hf.get("gate_noise_epsilon", 1e-2)))
    model_cfg.validate()
    moe_cfg.validate(model_cfg)
    return model_cfg, moe_cfg


def expected_mlp_names(moe_cfg: MoEConfig) -> list[str]:
    """Tensor names (under `mlp.`) our MoE layer has for this moe config, from a tiny model of that config."""
    from ..model import build_model

    tiny = ModelConfig(hidden_size=8, intermediate_size=moe_cfg.num_experts * 2, num_layers=1, num_heads=2,
                       vocab_size=8, max_seq_len=8)
    small = MoEConfig(**{**moe_cfg.__dict__, "expert_ffn_size": 2, "moe_layers": None, "layer_freq": 1,
                         "use_kernels": "off"})
    model = build_model(Config(model=tiny, moe=small))
    return [n[len("layers.0."):] for n in model.state_dict() if n.startswith("layers.0.mlp.")
            and not n.endswith("_extra_state")]


def _layer_tensors(src: HFTensors, i: int, E: int, want: list[str], D: int) -> dict[str, torch.Tensor]:
    pre = f"model.layers.{i}.mlp."
    out = {}
    for ours, theirs in _EXPERTS.items():
        out[f"layers.{i}.{ours}"] = torch.stack([src.get(f"{pre}calculator.experts.{theirs}.{j}") for j in range(E)])
    for ours, theirs in _ROUTER.items():
        if ours in want:
            if pre + theirs in src.files:
                out[f"layers.{i}.{ours}"] = src.get(pre + theirs)
            elif ours == "mlp.router.noise.weight":
                out[f"layers.{i}.{ours}"] = torch.zeros(E, D)  # gate_add_noise=false: no noise weights stored
            else:
                raise CheckpointError(f"{src.path}: missing tensor {pre + theirs!r}")
    for extra in want:
        name = f"layers.{i}.{extra}"
        if name not in out and extra not in _ROUTER and extra not in _EXPERTS:
            raise CheckpointError(f"{src.path}: no LLaMA-MoE tensor for our {name!r}")
    return out


def import_llama_moe(load: str | Path, save: str | Path, dtype: Optional[torch.dtype] = None) -> Path:
    """Convert a LLaMA-MoE v1 HF directory into a megatron_moe checkpoint, one layer in memory at a time."""
    from tqdm import tqdm

    from ..checkpoint import CheckpointWriter, config_dict

    load = Path(load)
    cfg_file = load / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{load}: no config.json (not an HF checkpoint directory)")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_file}: invalid JSON ({err.msg} at line {err.lineno})") from None
    try:
        model_cfg, moe_cfg = configs_from_llama_moe(hf, str(cfg_file))
    except KeyError as err:
        raise CheckpointError(f"{cfg_file}: missing key {err.args[0]!r}") from None
    src = HFTensors(load)
    want = expected_mlp_names(moe_cfg)
    dt = dtype or torch.float32
    D, E = model_cfg.hidden_size, moe_cfg.num_experts

    def backbone(prefix_ok) -> dict:
        return {c: src.get(n).to(dt) for n in src.names() if (c := backbone_from_hf(n)) and prefix_ok(c)}

    with CheckpointWriter(save, config_dict(model_cfg, moe_cfg, {"source": str(load), "imported_from": NAME})) as w:
        w.add_part("embed", backbone(lambda c: c == "embed.weight"))
        for i in tqdm(range(model_cfg.num_layers), desc="import llama-moe", unit="layer"):
            part = backbone(lambda c, i=i: c.startswith(f"layers.{i}."))
            part.update({k: v.to(dt) for k, v in _layer_tensors(src, i, E, want, D).items()})
            w.add_part(f"layer_{i:03d}", part)
        final = backbone(lambda c: c in ("norm.weight", "lm_head.weight"))
        if "lm_head.weight" not in final and hf.get("tie_word_embeddings"):
            final["lm_head.weight"] = src.get("model.embed_tokens.weight").to(dt).clone()
        if "lm_head.weight" not in final or "norm.weight" not in final:
            raise CheckpointError(f"{load}: missing lm_head.weight or model.norm.weight")
        w.add_part("final", final)
        copy_tokenizer(load, w)
    return Path(save)
