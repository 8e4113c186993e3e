"""Import a LLaMA-MoE v1 HF checkpoint (e.g. a released LLaMA-MoE-3.5B) into a megatron_moe checkpoint.

    megatron-moe import-llama-moe --load /models/LLaMA-MoE-v1-3_5B-2_8 --save ckpts/llama-moe [--dtype bf16]
"""
from __future__ import annotations

from .common import add_dtype, add_load, add_save, torch_dtype


IMPORTS = ("megatron_moe.export",)  # what main needs, imported at start-up (cli/__init__.py)


def add_arguments(p) -> None:
    add_load(p, "LLaMA-MoE v1 HF directory (config.json + safetensors/bin)")
    add_save(p, "output checkpoint directory (must not exist)")
    add_dtype(p, "fp32", "stored dtype")


def main(args) -> int:
    from ..atomic import check_output
    from ..export import import_llama_moe

    check_output(args.save)
    print(f"wrote {import_llama_moe(args.load, args.save, torch_dtype(args.dtype))}")
    return 0
