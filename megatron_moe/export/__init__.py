"""Export our checkpoints to HF model directories (formats/ holds one adapter per format). See docs/export.md.

    export_hf("runs/x/checkpoints/latest", "hf/x", "mixtral")     # -> Path of the HF directory
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch

from ..atomic import StagedWriter
from ..formats import EXPORT_FORMATS, ExportError, export_adapter

log = logging.getLogger(__name__)
DEFAULT_SHARD_BYTES = 5 * 1024**3
SAFE_NAME, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"


class HFWriter(StagedWriter):
    """Accumulate tensors into shards of at most `max_shard_bytes`; write `model.safetensors` (one shard) or
    `model-0000i-of-0000n.safetensors` + index, staged in a temporary directory (megatron_moe.atomic.StagedWriter:
    fsynced, renamed when complete, removed on any failure)."""

    json_indent = 2

    def __init__(self, save_dir: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False):
        super().__init__(save_dir, overwrite)
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

    def finish(self) -> None:
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.replace(self.tmp / "shard-00000.safetensors", self.tmp / SAFE_NAME)
            return
        weight_map = {}
        for i, names in enumerate(self._shards):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.tmp / f"shard-{i:05d}.safetensors", self.tmp / fname)
            weight_map.update({k: fname for k in names})
        self.write_json(SAFE_INDEX, {"metadata": {"total_size": self._total_bytes},
                                     "weight_map": dict(sorted(weight_map.items()))})


def check_format(fmt: str, path: str | Path) -> None:
    """Raise ExportError if checkpoint `path` cannot be exported as `fmt` (reads only config.json)."""
    from ..checkpoint import read_config

    model_cfg, moe_cfg, _ = read_config(path)
    export_adapter(fmt).check(model_cfg, moe_cfg)


def export_hf(load: str | Path, save: str | Path, fmt: str, dtype: Optional[torch.dtype] = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write checkpoint `load` (any of ours; a run dir resolves to its latest) as an HF model directory `save`.
    Tensors are read one part at a time in fp32, transformed (e.g. the score scale folded), cast to `dtype`
    (default: the stored dtype) and written as safetensors shards of at most `max_shard_bytes`."""
    from tqdm import tqdm

    from ..checkpoint import iter_tensors, read_index, resolve
    from ..checkpoint.verify import verify_checkpoint
    from .tokenizer_files import tokenizer_files

    adapter = export_adapter(fmt)
    ckpt = resolve(load)
    model_cfg, moe_cfg, _ = verify_checkpoint(ckpt)
    adapter.check(model_cfg, moe_cfg)
    tok_files = tokenizer_files(ckpt, model_cfg)  # checked before any tensor is converted
    out_dtype = dtype or getattr(torch, read_index(ckpt).get("dtype", "float32"))
    dtype_name = str(out_dtype).replace("torch.", "")
    n_tensors = sum(len(v) for v in read_index(ckpt)["parts"].values())
    with HFWriter(save, max_shard_bytes=max_shard_bytes) as w:
        for name, t in tqdm(iter_tensors(ckpt, dtype=torch.float32), total=n_tensors, desc=f"export {fmt}",
                            unit="tensor"):
            for hf_name, hf_t in adapter.convert(name, t, model_cfg, moe_cfg):
                w.add(hf_name, hf_t.to(out_dtype))
        w.write_json("config.json", adapter.hf_config(model_cfg, moe_cfg, dtype_name))
        tok_files.write(w.tmp)
    log.info("exported %s as %s to %s (carried: %s; written: %s)", ckpt, fmt, save,
             ", ".join(tok_files.carried) or "none", ", ".join(tok_files.written) or "none")
    return Path(save)


def import_llama_moe(load: str | Path, save: str | Path, dtype: Optional[torch.dtype] = None,
                     progress: bool = True) -> Path:
    from ..formats.llama_moe import import_llama_moe as _imp

    return _imp(load, save, dtype, progress)


__all__ = ["EXPORT_FORMATS", "ExportError", "HFWriter", "check_format", "export_hf", "import_llama_moe"]
