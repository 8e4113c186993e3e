#!/usr/bin/env python
"""Import a dense LLaMA-2 checkpoint (HF or Meta format, detected) into a megatron_moe checkpoint.

    python tools/import_llama.py --load /models/Llama-2-7b-hf --save ckpts/llama2-7b [--dtype bf16]
"""
import argparse

import torch

from megatron_moe.cli import run

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="dense checkpoint directory (HF or Meta)")
    ap.add_argument("--save", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--dtype", choices=DTYPES, default="fp32", help="stored dtype")
    args = ap.parse_args()
    from megatron_moe.construct.import_dense import import_dense

    out = import_dense(args.load, args.save, DTYPES[args.dtype])
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
