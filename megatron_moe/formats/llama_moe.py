"""The LLaMA-MoE v1 HF layout, out and in (released LLaMA-MoE models load into our format to train further).

  model.layers.{i}.mlp.gate.gate_network.weight             [E, D]  linear gate network
  model.layers.{i}.mlp.gate.gate_network.{0,2}.weight       [E, D], [E, E]  mlp gate (Linear -> Tanh -> Linear)
  model.layers.{i}.mlp.gate.weight_noise.weight             [E, D]  noise weights (when gate_add_noise)
  model.layers.{i}.mlp.calculator.experts.weight_gate.{j}   [F, D]
  model.layers.{i}.mlp.calculator.experts.weight_up.{j}     [F, D]
  model.layers.{i}.mlp.calculator.experts.weight_down.{j}   [D, F]
  model.layers.{i}.self_attn.rotary_emb.inv_freq            [h/2]   written, as their modeling code stores it; on
                                                                    import checked (to the stored dtype's rounding), dropped
config.json: model_type llama_moe, num_experts, num_selects, size_experts (per layer, per expert), gate_type
TopKBalancedNoisyGate, gate_network, gate_add_noise, gate_noise_epsilon, gate_use_balance,
gate_balance_loss_weight, calculator_type UniversalCalculator, multiply_gate_scores, score_scale_factor, and the
auto_map of the released checkpoints (configuration_llama_moe / modeling_llama_moe, trust_remote_code).
Nothing is folded: the score scale stays in the config, and the router (gate network and noise) is kept.

Their modeling code is LLaMA-2's (default rotary embedding, no biases, head width hidden/heads, no sliding
window); checkpoints that need more are refused with the format that holds them.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator, Optional

import torch

from ..config import ConfigError, ModelConfig, MoEConfig
from ..errors import CheckpointError
from .dense import BACKBONE, ExportError, canonical_shapes
from .hf_config import model_config_from_hf
from .hf_files import HFTensors, read_json
from .keys import ExpertMap, KeyMap
from .mixtral import check_all_routed

log = logging.getLogger(__name__)
NAME = "llama-moe"
EXPERTS = ExpertMap([("layers.{i}.mlp.experts.w1", "model.layers.{i}.mlp.calculator.experts.weight_gate.{j}"),
                     ("layers.{i}.mlp.experts.w3", "model.layers.{i}.mlp.calculator.experts.weight_up.{j}"),
                     ("layers.{i}.mlp.experts.w2", "model.layers.{i}.mlp.calculator.experts.weight_down.{j}")])
ROUTER = KeyMap([("layers.{i}.mlp.router.gate.weight", "model.layers.{i}.mlp.gate.gate_network.weight"),
                 ("layers.{i}.mlp.router.gate.0.weight", "model.layers.{i}.mlp.gate.gate_network.0.weight"),
                 ("layers.{i}.mlp.router.gate.2.weight", "model.layers.{i}.mlp.gate.gate_network.2.weight"),
                 ("layers.{i}.mlp.router.noise.weight", "model.layers.{i}.mlp.gate.weight_noise.weight")])
INV_FREQ = "model.layers.{i}.self_attn.rotary_emb.inv_freq"
AUTO_MAP = {"AutoConfig": "configuration_llama_moe.LlamaMoEConfig",
            "AutoModel": "modeling_llama_moe.LlamaMoEModel",
            "AutoModelForCausalLM": "modeling_llama_moe.LlamaMoEForCausalLM"}
_FIXED = (("gate_type", "TopKBalancedNoisyGate"), ("calculator_type", "UniversalCalculator"),
          ("gate_use_softmax", True), ("multiply_gate_scores", True), ("add_weight_norm", False))
_MOE_FIELDS = {"num_experts", "num_selects", "size_experts", "gate_network", "gate_add_noise", "gate_noise_epsilon",
               "gate_use_balance", "gate_balance_loss_weight", "score_scale_factor", "auto_map", "megatron_moe_router",
               "gate_balance_loss_weight", "gate_use_softmax", "gate_type", "calculator_type",
               "multiply_gate_scores", "add_weight_norm", "drop_tokens", "dropped_padding", "capacity_factor",
               "use_cache"}


def _default_inv_freq(model: ModelConfig) -> torch.Tensor:
    h = model.head_width
    return 1.0 / (model.rope_theta ** (torch.arange(0, h, 2, dtype=torch.float32) / h))


def inv_freq_mismatch(stored: torch.Tensor, model: ModelConfig) -> Optional[str]:
    """Why a stored rotary_emb.inv_freq buffer is not the default frequencies 1/theta^(2i/h) (a phrase to follow
    its name); None when it is.

    Their code (and our exporter) computes the frequencies in fp32 and the buffer is then cast with the model
    (bf16 in the released checkpoints). So a stored value is the exact frequency rounded twice: in fp32 (the
    exponent 2i/h rounded, amplified by ln(theta), then pow and divide: within (ln(theta)*2i/h + 2) fp32 ulps) and
    to the stored dtype (round-to-nearest, but we accept either neighbour: a faithful rounding, as the fp32 step
    can land on the other side of a midpoint). Anything further off was not made from this rope_theta: in bf16 a
    theta 0.3% off (head width 128; 0.6% at 16) is still told apart, in fp32 0.1%."""
    if not stored.is_floating_point():
        return f" is {str(stored.dtype).replace('torch.', '')}, not floating point"
    h = model.head_width
    x = torch.arange(0, h, 2, dtype=torch.float64) / h
    exact = model.rope_theta ** -x
    if tuple(stored.shape) != tuple(exact.shape):
        return f" has shape {tuple(stored.shape)}, not ({len(exact)},) for head width {h}"
    fi = torch.finfo(stored.dtype)
    ulp = (fi.eps * 2.0 ** torch.floor(torch.log2(exact))).clamp(min=fi.tiny * fi.eps)  # spacing at each value
    tol = ulp + torch.finfo(torch.float32).eps * (math.log(model.rope_theta) * x + 2) * exact
    ok = (stored.double() - exact).abs() <= tol  # False for NaN
    if bool(ok.all()):
        return None
    j = int((~ok).nonzero()[0])
    dt = str(stored.dtype).replace("torch.", "")
    return f"[{j}] = {stored[j].item():.6g}, not {exact[j].item():.6g} within {dt} rounding"


# ------------------------------------------------------------------------------------------------ export
def check(model: ModelConfig, moe: MoEConfig) -> None:
    check_all_routed(model, moe, "llama-moe")
    if moe.router not in ("noisy_topk", "softmax_topk"):
        raise ExportError(f"--format llama-moe holds a TopKBalancedNoisyGate router but the checkpoint has "
                          f"router={moe.router}; no HF format reproduces it exactly, keep the megatron_moe "
                          f"checkpoint (megatron_moe.load_model)")
    alt = "use --format qwen2-moe" if model.qkv_bias else "use --format mixtral"
    kind = (model.rope_scaling or {}).get("rope_type", "default")
    why = ("q/k/v biases (a Qwen2 base)" if model.qkv_bias or model.attn_out_bias else
           f"rope_type={kind} rotary scaling" if kind != "default" else
           f"head_dim={model.head_dim} != hidden/heads" if model.head_dim else
           f"a sliding window of {model.sliding_window}" if model.sliding_window else
           "tied input/output embeddings" if model.tie_embeddings else None)
    if why:
        raise ExportError(f"--format llama-moe is LLaMA-2's architecture and cannot hold {why}; {alt}")


def _add_noise(moe: MoEConfig) -> bool:
    return moe.router == "noisy_topk" and moe.noisy_gate


def hf_config(model: ModelConfig, moe: MoEConfig, dtype_name: str) -> dict:
    F, E = moe.ffn_size(model), moe.num_experts
    return {"architectures": ["LlamaMoEForCausalLM"], "model_type": "llama_moe", "auto_map": dict(AUTO_MAP),
            "hidden_size": model.hidden_size, "intermediate_size": E * F, "num_hidden_layers": model.num_layers,
            "num_attention_heads": model.num_heads, "num_key_value_heads": model.kv_heads,
            "vocab_size": model.vocab_size, "max_position_embeddings": model.max_seq_len,
            "rms_norm_eps": model.norm_eps, "rope_theta": model.rope_theta, "rope_scaling": None,
            "hidden_act": "silu", "tie_word_embeddings": False, "pretraining_tp": 1, "torch_dtype": dtype_name,
            "bos_token_id": model.bos_token_id, "eos_token_id": model.eos_token_id, "use_cache": True,
            "num_experts": E, "num_selects": moe.top_k, "size_experts": [[F] * E for _ in range(model.num_layers)],
            "gate_type": "TopKBalancedNoisyGate",
            "gate_network": moe.gate_network if moe.router == "noisy_topk" else "linear",
            "gate_use_softmax": True, "gate_use_balance": moe.aux_loss_coeff > 0,
            "gate_balance_loss_weight": moe.aux_loss_coeff, "gate_add_noise": _add_noise(moe),
            "gate_noise_epsilon": moe.noise_epsilon, "calculator_type": "UniversalCalculator",
            "multiply_gate_scores": True, "score_scale_factor": float(moe.scale), "add_weight_norm": False,
            "megatron_moe_router": moe.router}


def convert(name: str, t: torch.Tensor, model: ModelConfig, moe: MoEConfig) -> Iterator[tuple[str, torch.Tensor]]:
    hf = BACKBONE.theirs(name)
    if hf is not None:
        yield hf, t
        if name.endswith("attn_norm.weight"):
            yield INV_FREQ.format(i=name.split(".")[1]), _default_inv_freq(model).to(t.dtype)
    elif EXPERTS.theirs(name, 0) is not None:
        for j in range(t.shape[0]):
            yield EXPERTS.theirs(name, j), t[j].clone()
    elif name.endswith("mlp.router.noise.weight"):
        if _add_noise(moe):
            yield ROUTER.theirs(name), t
    elif ROUTER.theirs(name) is not None:
        yield ROUTER.theirs(name), t
    else:
        raise ExportError(f"tensor {name!r} has no place in the llama-moe format")


# ------------------------------------------------------------------------------------------------ import
def _score_scale(hf: dict, where: str, layers: int) -> float:
    s = hf.get("score_scale_factor", 1.0)
    if isinstance(s, (list, tuple)):
        values = sorted({float(v) for v in s})
        if len(s) != layers or len(values) != 1:
            raise CheckpointError(f"{where}: score_scale_factor must be one number, or {layers} equal ones; got "
                                  f"{len(s)} values {values[:4]} (per-layer scales are not modelled)")
        return values[0]
    return float(s)


def configs_from_llama_moe(hf: dict, where: str = "config.json") -> tuple[ModelConfig, MoEConfig]:
    """Our model + moe config for a LLaMA-MoE v1 config.json; unsupported variants raise CheckpointError."""
    if hf.get("model_type") != "llama_moe":
        raise CheckpointError(f"{where}: model_type is {hf.get('model_type')!r}, expected 'llama_moe'")
    for key, want in _FIXED:
        if hf.get(key, want) != want:
            raise CheckpointError(f"{where}: {key}={hf.get(key)!r} is not supported (only {want!r})")
    from ..structured import field_int

    E, k = field_int(hf, "num_experts", where, CheckpointError), field_int(hf, "num_selects", where, CheckpointError)
    L = field_int(hf, "num_hidden_layers", where, CheckpointError)
    ffn = field_int(hf, "intermediate_size", where, CheckpointError)
    if E < 1 or L < 1 or ffn < 1:
        raise CheckpointError(f"{where}: num_experts={E}, num_hidden_layers={L} and intermediate_size={ffn} must "
                              f"be >= 1")
    sizes = hf.get("size_experts")
    if sizes is not None and not (isinstance(sizes, list) and all(
            isinstance(layer, list) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                            for s in layer) for layer in sizes)):
        raise CheckpointError(f"{where}: size_experts must be a list of lists of positive integers")
    flat = sorted({s for layer in sizes for s in layer}) if sizes else [ffn // E]
    if len(flat) != 1 or (sizes and (len(sizes) != L or any(len(layer) != E for layer in sizes))):
        raise CheckpointError(f"{where}: size_experts must give {E} equal experts in each of {L} layers, "
                              f"got sizes {flat[:4]}")
    dense = {key: v for key, v in hf.items() if key not in _MOE_FIELDS}
    model_cfg = model_config_from_hf({**dense, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}, where)
    model_cfg.intermediate_size = E * flat[0]
    router = hf.get("megatron_moe_router", "noisy_topk")
    moe_cfg = MoEConfig(num_experts=E, top_k=k, expert_ffn_size=flat[0], router=router,
                        gate_network=str(hf.get("gate_network", "mlp")).lower() if router == "noisy_topk" else "linear",
                        score_scale=_score_scale(hf, where, L),
                        aux_loss_coeff=float(hf.get("gate_balance_loss_weight", 1e-2)) if hf.get("gate_use_balance", True) else 0.0,
                        noisy_gate=bool(hf.get("gate_add_noise", True)),
                        noise_epsilon=float(hf.get("gate_noise_epsilon", 1e-2)))
    try:
        moe_cfg.validate(model_cfg)
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None
    return model_cfg, moe_cfg


class LlamaMoEReader:
    """Canonical tensors of a LLaMA-MoE v1 directory, one layer at a time (experts stacked)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{self.path}: no config.json (not an HF checkpoint directory)")
        self.model, self.moe = configs_from_llama_moe(read_json(cfg_file), str(cfg_file))
        self.files = HFTensors(self.path)
        self.shapes = canonical_shapes(self.model, self.moe, names=self.files.names(), where=str(cfg_file))
        self._check_inv_freq()

    def _check_inv_freq(self) -> None:
        """Every layer's stored rotary buffer must be the default frequencies of config.json's rope_theta (they are
        then dropped: our model computes them). Read shard by shard."""
        names = [n for n in (INV_FREQ.format(i=i) for i in range(self.model.num_layers)) if n in self.files]
        for name in sorted(names, key=lambda n: str(self.files.files[n])):
            why = inv_freq_mismatch(self.files.get(name), self.model)
            if why:
                raise CheckpointError(f"{self.path}: {name}{why}: not the default rotary frequencies of "
                                      f"rope_theta={self.model.rope_theta} (custom rotary buffers are not modelled)")

    def get(self, name: str) -> torch.Tensor:
        E = self.moe.num_experts
        experts = EXPERTS.names(name, E)
        if experts is not None:
            t = torch.stack([self.files.get(n) for n in experts])
        elif name.endswith("mlp.router.noise.weight") and ROUTER.theirs(name) not in self.files:
            t = torch.zeros(self.shapes[name])  # gate_add_noise=false: no noise weights stored
        else:
            theirs = BACKBONE.theirs(name) or ROUTER.theirs(name)
            if theirs is None:
                raise CheckpointError(f"{self.path}: no LLaMA-MoE tensor for our {name!r}")
            t = self.files.get(theirs)
        if tuple(t.shape) != self.shapes[name]:
            raise CheckpointError(f"{self.path}: {name} has shape {tuple(t.shape)} but config.json implies "
                                  f"{self.shapes[name]}")
        return t


def import_llama_moe(load: str | Path, save: str | Path, dtype: Optional[torch.dtype] = None,
                     progress: bool = True) -> Path:
    """Convert a LLaMA-MoE v1 HF directory into a megatron_moe checkpoint, one layer in memory at a time."""
    from tqdm import tqdm

    from ..checkpoint import CheckpointWriter, config_dict, part_of
    from ..checkpoint.store import copy_tokenizer

    reader = LlamaMoEReader(load)
    dt = dtype or torch.float32
    parts: dict[str, list[str]] = {}
    for n in reader.shapes:
        parts.setdefault(part_of(n), []).append(n)
    with CheckpointWriter(save, config_dict(reader.model, reader.moe, {"source": str(load), "imported_from": NAME})) as w:
        for part, names in tqdm(parts.items(), desc="import llama-moe", unit="part", disable=not progress):
            w.add_part(part, {n: reader.get(n).to(dt) for n in names})
        copy_tokenizer(load, w)
    return Path(save)
