"""Read dense LLaMA checkpoints in HF format (config.json + safetensors, sharded safetensors with an index,
or pytorch_model*.bin), one tensor at a time, under canonical names (docs/checkpoint_format.md)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import torch

from ..config import ConfigError, ModelConfig
from ..errors import CheckpointError

_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "mlp.w1.weight",
    "mlp.up_proj.weight": "mlp.w3.weight",
    "mlp.down_proj.weight": "mlp.w2.weight",
}
_TOP_MAP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
            "lm_head.weight": "lm_head.weight"}
SUPPORTED_ARCHS = ("LlamaForCausalLM",)


def _plain_file_name(name) -> bool:
    """An index entry that names a file inside the checkpoint directory (no paths, no '..')."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def hf_to_canonical(name: str) -> str | None:
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m and m.group(2) in _LAYER_MAP:
        return f"layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return None


def canonical_to_hf(name: str) -> str:
    for hf, ours in _TOP_MAP.items():
        if name == ours:
            return hf
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    inv = {v: k for k, v in _LAYER_MAP.items()}
    if m and m.group(2) in inv:
        return f"model.layers.{m.group(1)}.{inv[m.group(2)]}"
    raise KeyError(f"no HF LLaMA name for {name!r}")


def model_config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or (archs and not any(a in SUPPORTED_ARCHS for a in archs)):
        raise CheckpointError(f"{where}: unsupported architecture {archs or hf.get('model_type')!r}; "
                              f"expected a dense LLaMA ({', '.join(SUPPORTED_ARCHS)})")
    try:
        cfg = ModelConfig(hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
                           num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                           num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                           vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 4096),
                           rope_theta=float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
                           rope_scaling=hf.get("rope_scaling"), norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
                           bos_token_id=hf.get("bos_token_id", 1) or 1, eos_token_id=hf.get("eos_token_id", 2) or 2)
    except KeyError as err:
        raise CheckpointError(f"{where}: missing key {err.args[0]!r}") from None
    try:
        cfg.validate()
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None
    return cfg


def hf_config_from_model(cfg: ModelConfig) -> dict:
    """HF LlamaConfig fields for a dense export."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta,
            "rope_scaling": cfg.rope_scaling, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Canonical name -> shape of a dense LLaMA with this config."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    out = {"embed.weight": (cfg.vocab_size, d), "norm.weight": (d,), "lm_head.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        out.update({p + "attn_norm.weight": (d,), p + "mlp_norm.weight": (d,),
                    p + "attn.wq.weight": (cfg.num_heads * h, d), p + "attn.wk.weight": (cfg.kv_heads * h, d),
                    p + "attn.wv.weight": (cfg.kv_heads * h, d), p + "attn.wo.weight": (d, cfg.num_heads * h),
                    p + "mlp.w1.weight": (f, d), p + "mlp.w3.weight": (f, d), p + "mlp.w2.weight": (d, f)})
    return out


class HFLlamaReader:
    """Stream tensors of an HF LLaMA directory by canonical name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{self.path}: no config.json (not an HF checkpoint directory)")
        try:
            self.hf_config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{cfg_file}: invalid JSON ({err.msg} at line {err.lineno})") from None
        self.config = model_config_from_hf(self.hf_config, str(cfg_file))
        self.tied = bool(self.hf_config.get("tie_word_embeddings", False))
        self._open: dict[Path, object] = {}
        self._bin_cache: tuple[Path, dict] | None = None
        self._files = self._locate()
        self.shapes = expected_shapes(self.config)
        missing = [n for n in self.shapes if n not in self._files and not (n == "lm_head.weight" and self.tied)]
        if missing:
            raise CheckpointError(f"{self.path}: checkpoint lacks {len(missing)} tensors, e.g. "
                                  f"{canonical_to_hf(missing[0])!r}")

    def _locate(self) -> dict[str, Path]:
        """canonical name -> file holding it."""
        index_names = ["model.safetensors.index.json", "pytorch_model.bin.index.json"]
        for idx_name in index_names:
            idx = self.path / idx_name
            if idx.is_file():
                try:
                    weight_map = json.loads(idx.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError):
                    raise CheckpointError(f"{idx}: not a valid index (needs a 'weight_map')") from None
                bad = [f for f in weight_map.values() if not _plain_file_name(f)]
                if bad:
                    raise CheckpointError(f"{idx}: shard name {bad[0]!r} is not a file in {self.path}")
                out = {}
                for hf_name, fname in weight_map.items():
                    if (c := hf_to_canonical(hf_name)) is not None:
                        out[c] = self.path / fname
                for f in set(out.values()):
                    if not f.is_file():
                        raise CheckpointError(f"{idx}: shard {f.name} is missing")
                return out
        for single in ("model.safetensors", "pytorch_model.bin"):
            f = self.path / single
            if f.is_file():
                return {c: f for c in (hf_to_canonical(n) for n in self._names_in(f)) if c is not None}
        raise CheckpointError(f"{self.path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")

    def _names_in(self, f: Path) -> list[str]:
        if f.suffix == ".safetensors":
            return list(self._safe(f).keys())
        return list(self._bin(f).keys())

    def _safe(self, f: Path):
        from safetensors import safe_open

        if f not in self._open:
            try:
                self._open[f] = safe_open(str(f), framework="pt")
            except Exception as err:  # safetensors raises its own error types for truncated headers
                raise CheckpointError(f"{f}: truncated or corrupt safetensors file ({str(err).splitlines()[0]})") from None
        return self._open[f]

    def _bin(self, f: Path) -> dict:
        if self._bin_cache is None or self._bin_cache[0] != f:
            self._bin_cache = None  # release the previous shard first
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise CheckpointError(f"{f}: cannot read ({str(err).splitlines()[0]})") from None
            self._bin_cache = (f, sd)
        return self._bin_cache[1]

    def release(self) -> None:
        """Close the open shards: their memory-mapped pages otherwise stay resident as layers are read."""
        self._open.clear()
        self._bin_cache = None

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str) -> torch.Tensor:
        """The canonical tensor `name` (fp32/bf16 as stored), shape-checked against config.json."""
        if name == "lm_head.weight" and self.tied and name not in self._files:
            name_src = "embed.weight"
        else:
            name_src = name
        if name_src not in self._files:
            raise CheckpointError(f"{self.path}: missing tensor {canonical_to_hf(name_src)!r}")
        f, hf_name = self._files[name_src], canonical_to_hf(name_src)
        try:
            t = self._safe(f).get_tensor(hf_name) if f.suffix == ".safetensors" else self._bin(f)[hf_name]
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{f}: cannot read {hf_name!r} ({str(err).splitlines()[0]})") from None
        want = self.shapes.get(name)
        if want is not None and tuple(t.shape) != want:
            raise CheckpointError(f"{f}: {hf_name} has shape {tuple(t.shape)} but config.json implies {want}")
        return t

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for n in self.names():
            yield n, self.get(n)
