"""Export our checkpoints to standard HF layouts (and import LLaMA-MoE v1). See docs/export.md.

    export_hf("runs/x/checkpoints/latest", "hf/x", "mixtral")     # -> Path of the HF directory
    import_llama_moe("llama-moe-3.5B", "ckpts/llama-moe")          # LLaMA-MoE v1 HF -> megatron_moe
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Optional

import torch

from .common import DEFAULT_SHARD_BYTES, ExportError, HFWriter, copy_tokenizer

log = logging.getLogger(__name__)
FORMATS = {"mixtral": "mixtral", "llama-moe": "llama_moe", "qwen2-moe": "qwen2_moe", "llama": "llama"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def format_module(fmt: str):
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{FORMATS[fmt]}")


def check_format(fmt: str, path: str | Path) -> None:
    """Raise ExportError if checkpoint `path` cannot be exported as `fmt` (reads only config.json)."""
    from ..checkpoint import read_config

    model_cfg, moe_cfg, _ = read_config(path)
    format_module(fmt).check(model_cfg, moe_cfg)


def export_hf(load: str | Path, save: str | Path, fmt: str, dtype: Optional[torch.dtype] = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write checkpoint `load` (any of ours; a run dir resolves to its latest) as an HF model directory `save`.
    Tensors are read one part at a time in fp32, transformed (e.g. the score scale folded), cast to `dtype`
    (default: the stored dtype) and written as safetensors shards of at most `max_shard_bytes`."""
    from tqdm import tqdm

    from ..checkpoint import read_config, read_index, resolve
    from .common import iter_checkpoint

    mod = format_module(fmt)
    ckpt = resolve(load)
    model_cfg, moe_cfg, _ = read_config(ckpt)
    mod.check(model_cfg, moe_cfg)
    out_dtype = dtype or getattr(torch, read_index(ckpt).get("dtype", "float32"))
    n_tensors = sum(len(v) for v in read_index(ckpt)["parts"].values())
    with HFWriter(save, max_shard_bytes=max_shard_bytes) as w:
        for name, t in tqdm(iter_checkpoint(ckpt, dtype=torch.float32), total=n_tensors, desc=f"export {fmt}",
                            unit="tensor"):
            for hf_name, hf_t in mod.convert(name, t, model_cfg, moe_cfg):
                w.add(hf_name, hf_t.to(out_dtype))
        w.write_json("config.json", mod.hf_config(model_cfg, moe_cfg, out_dtype))
        w.write_json("generation_config.json", {"bos_token_id": model_cfg.bos_token_id,
                                                "eos_token_id": model_cfg.eos_token_id})
        copied = copy_tokenizer(ckpt, w)
    log.info("exported %s as %s to %s (tokenizer files: %s)", ckpt, fmt, save, ", ".join(copied) or "none")
    return Path(save)


def import_llama_moe(load: str | Path, save: str | Path, dtype: Optional[torch.dtype] = None) -> Path:
    from .llama_moe import import_llama_moe as _imp

    return _imp(load, save, dtype)


__all__ = ["FORMATS", "DTYPES", "ExportError", "HFWriter", "check_format", "export_hf", "format_module",
           "import_llama_moe"]
