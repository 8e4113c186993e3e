#!/usr/bin/env python
"""Import a LLaMA-MoE v1 HF checkpoint (e.g. a released LLaMA-MoE-3.5B) into a megatron_moe checkpoint.

    python tools/import_llama_moe.py --load /models/LLaMA-MoE-v1-3_5B-2_8 --save ckpts/llama-moe [--dtype bf16]
"""
import argparse

from megatron_moe.cli import run


def main() -> None:
    from megatron_moe.export import DTYPES, import_llama_moe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="LLaMA-MoE v1 HF directory (config.json + safetensors/bin)")
    ap.add_argument("--save", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="stored dtype")
    args = ap.parse_args()
    print(f"wrote {import_llama_moe(args.load, args.save, DTYPES[args.dtype])}")


if __name__ == "__main__":
    run(main)
