#!/usr/bin/env python
"""Benchmark our MoE layer (forward+backward) against transformers' MixtralSparseMoeBlock with the same config and
weights, in the same run; prints time, tokens/s, memory and the speedup ratio, optionally writes JSON.

    python tools/benchmark_moe_layer.py                       # tiny CPU config
    python tools/benchmark_moe_layer.py --hidden 1024 --ffn 2816 --seq 2048 --dtype bfloat16   # GPU
"""
import argparse
import json
import os
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--ffn", type=int, default=256, help="FFN width of one expert")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--use-kernels", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args(argv)
    from megatron_moe.model.moe.benchmark import run_benchmark

    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.warmup < 0 or args.iters < 1:
            raise ValueError("--warmup must be >= 0 and --iters >= 1")
        res = run_benchmark(args.hidden, args.ffn, args.experts, args.top_k, args.batch, args.seq, args.device,
                            getattr(torch, args.dtype), args.warmup, args.iters, args.use_kernels)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"config: {res['config']}  (outputs agree to {res['max_abs_diff']:.2e})")
    for name in ("ours", "mixtral_hf", "floor"):
        r = res[name]
        mem = {k: f"{v / 2**20:.1f} MiB" for k, v in r.items() if k.endswith("bytes")}
        print(f"{name:>10}: fwd+bwd {r['median_s'] * 1e3:8.2f} ms  {r['tokens_per_s']:10.0f} tokens/s  {mem}")
    print(f"speedup (Mixtral time / ours): {res['speedup']:.2f}x; bound from the expert-matmul floor "
          f"(Mixtral time / floor): {res['max_possible_speedup']:.2f}x")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
