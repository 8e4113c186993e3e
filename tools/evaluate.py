#!/usr/bin/env python
"""Per-domain loss and perplexity of a checkpoint over indexed datasets (batched, progress bar).

    python tools/evaluate.py --load runs/x --data wiki=data/wiki_text_document code=data/code_text_document \
        --seq-len 512 --batch-size 8 --max-batches 50 [--json out.json]
"""
import argparse
import json

from megatron_moe.cli import run

DTYPES = ("fp32", "bf16", "fp16")


def main() -> None:
    import torch

    from megatron_moe import load_model
    from megatron_moe.evaluation import evaluate_domains, parse_domains

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="checkpoint or run directory")
    ap.add_argument("--data", required=True, nargs="+", help="[NAME=]PREFIX of indexed datasets (one domain each)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: model.max_seq_len)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-batches", type=int, default=None, help="per domain (default: all of it)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=DTYPES, default="fp32")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = load_model(args.load, device=args.device, dtype=dtype)
    seq_len = args.seq_len or model.cfg.max_seq_len
    res = evaluate_domains(model, parse_domains(args.data), seq_len, args.batch_size, args.max_batches)
    for name, r in res.items():
        print(f"{name:20s} loss {r['loss']:.4f}  ppl {r['ppl']:.2f}  ({r['tokens']} tokens)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    run(main)
