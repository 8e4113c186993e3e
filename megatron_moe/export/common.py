"""Shared pieces of every HF export: a sharded safetensors writer (temp dir + rename, index for >1 shard),
tokenizer copy, dtype handling, and the name mapping of the non-MLP tensors (attention, norms, embeddings).

    with HFWriter(save_dir, max_shard_bytes=5 << 30) as w:       # `.NAME.tmp-PID`, renamed on success
        w.add("model.embed_tokens.weight", t)
        w.write_json("config.json", {...})
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint.store import copy_tokenizer  # noqa: F401  (re-exported for export/*)
from ..atomic import AtomicDir
from ..errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 5 * 1024**3
SAFE_NAME, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"


class ExportError(UserError):
    """A checkpoint that cannot be written in the asked format (the message names the alternative)."""


class HFWriter:
    """Accumulate tensors into shards of at most `max_shard_bytes`; write `model.safetensors` (one shard) or
    `model-0000i-of-0000n.safetensors` + index, inside a megatron_moe.atomic.AtomicDir (fsynced, renamed when
    complete, removed on any failure)."""

    def __init__(self, save_dir: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False):
        self._dir = AtomicDir(save_dir, overwrite)
        self.final, self.tmp = self._dir.final, self._dir.tmp
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []   # names per written shard
        self._total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in s for s in self._shards):
            raise ValueError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._pending_bytes += nbytes
        self._total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        idx = len(self._shards)
        save_file(self._pending, str(self.tmp / f"shard-{idx:05d}.safetensors"), metadata={"format": "pt"})
        self._shards.append(sorted(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def write_json(self, filename: str, obj) -> None:
        (self.tmp / filename).write_text(json.dumps(obj, indent=2) + "\n")

    def copy_in(self, src: str | Path, name: Optional[str] = None) -> None:
        shutil.copy2(src, self.tmp / (name or Path(src).name))

    def commit(self) -> Path:
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.replace(self.tmp / "shard-00000.safetensors", self.tmp / SAFE_NAME)
        else:
            weight_map = {}
            for i, names in enumerate(self._shards):
                fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                os.replace(self.tmp / f"shard-{i:05d}.safetensors", self.tmp / fname)
                weight_map.update({k: fname for k in names})
            self.write_json(SAFE_INDEX, {"metadata": {"total_size": self._total_bytes},
                                         "weight_map": dict(sorted(weight_map.items()))})
        return self._dir.commit()

    def abort(self) -> None:
        self._dir.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


# ------------------------------------------------------------------------ non-MLP name mapping (all formats)
_TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "attn.wq.weight": "self_attn.q_proj.weight",
          "attn.wk.weight": "self_attn.k_proj.weight", "attn.wv.weight": "self_attn.v_proj.weight",
          "attn.wo.weight": "self_attn.o_proj.weight", "mlp_norm.weight": "post_attention_layernorm.weight"}
_LAYER_INV = {v: k for k, v in _LAYER.items()}
_TOP_INV = {v: k for k, v in _TOP.items()}
LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)")
HF_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


def backbone_to_hf(name: str) -> Optional[str]:
    """HF LLaMA-family name of a canonical non-MLP tensor, or None for MLP tensors."""
    if name in _TOP:
        return _TOP[name]
    m = LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}"
    return None


def backbone_from_hf(name: str) -> Optional[str]:
    """Canonical name of an HF LLaMA-family non-MLP tensor, or None."""
    if name in _TOP_INV:
        return _TOP_INV[name]
    m = HF_LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_INV:
        return f"layers.{m.group(1)}.{_LAYER_INV[m.group(2)]}"
    return None


def base_hf_config(model_cfg, dtype: torch.dtype) -> dict:
    """Fields every LLaMA-family HF config shares."""
    from ..construct.hf_llama import hf_config_from_model

    cfg = hf_config_from_model(model_cfg)
    cfg["torch_dtype"] = str(dtype).replace("torch.", "")
    return cfg


class HFTensors:
    """Read tensors of an HF model directory by HF name: model.safetensors, a sharded safetensors index, or
    pytorch_model*.bin (torch.load with weights_only=True). Bad files raise CheckpointError with the path."""

    def __init__(self, path: str | Path):
        from ..errors import CheckpointError

        self.path, self._err = Path(path), CheckpointError
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such HF model directory")
        self._open: dict[Path, object] = {}
        self._bin: Optional[tuple[Path, dict]] = None
        self.files = self._locate()

    def _locate(self) -> dict[str, Path]:
        for idx_name in (SAFE_INDEX, "pytorch_model.bin.index.json"):
            idx = self.path / idx_name
            if idx.is_file():
                try:
                    weight_map = json.loads(idx.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise self._err(f"{idx}: not a valid index (needs a 'weight_map')") from None
                from ..construct.hf_llama import _plain_file_name

                bad = [v for v in weight_map.values() if not _plain_file_name(v)]
                if bad:
                    raise self._err(f"{idx}: shard name {bad[0]!r} is not a file in {self.path}")
                out = {k: self.path / v for k, v in weight_map.items()}
                for f in sorted(set(out.values())):
                    if not f.is_file():
                        raise self._err(f"{idx}: shard {f.name} is missing")
                return out
        for single in (SAFE_NAME, "pytorch_model.bin"):
            f = self.path / single
            if f.is_file():
                names = self._safe(f).keys() if f.suffix == ".safetensors" else self._load_bin(f).keys()
                return {k: f for k in names}
        raise self._err(f"{self.path}: no {SAFE_NAME}, {SAFE_INDEX} or pytorch_model.bin")

    def _safe(self, f: Path):
        from safetensors import safe_open

        if f not in self._open:
            try:
                self._open[f] = safe_open(str(f), framework="pt")
            except Exception as err:  # safetensors raises its own error types on bad headers
                raise self._err(f"{f}: truncated or corrupt safetensors file ({str(err).splitlines()[0]})") from None
        return self._open[f]

    def _load_bin(self, f: Path) -> dict:
        if self._bin is None or self._bin[0] != f:
            self._bin = None
            try:
                self._bin = (f, torch.load(f, map_location="cpu", weights_only=True))
            except Exception as err:
                raise self._err(f"{f}: cannot read ({str(err).splitlines()[0]})") from None
        return self._bin[1]

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise self._err(f"{self.path}: missing tensor {name!r}")
        f = self.files[name]
        try:
            return self._safe(f).get_tensor(name) if f.suffix == ".safetensors" else self._load_bin(f)[name]
        except self._err:
            raise
        except Exception as err:
            raise self._err(f"{f}: cannot read {name!r} ({str(err).splitlines()[0]})") from None


def iter_checkpoint(ckpt: Path, dtype: Optional[torch.dtype] = None):
    """checkpoint.iter_tensors, one part at a time."""
    from ..checkpoint import iter_tensors

    yield from iter_tensors(ckpt, dtype=dtype)
