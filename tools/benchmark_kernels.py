#!/usr/bin/env python
"""Benchmark the MoE kernels (expert MLP fwd / fwd+bwd, top-k gating) against baselines run in the same
process, print a table and write JSON.

GPU:  python tools/benchmark_kernels.py --json bench.json
CPU:  python tools/benchmark_kernels.py --smoke      (tiny shapes; checks the script works, numbers meaningless)
"""
import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few iterations (CPU CI)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--json", default="benchmark_kernels.json", help="output JSON path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks.kernels import format_table, run_all

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        if device.type != "cuda" and not args.smoke:
            raise ValueError("full-size benchmarks need a CUDA device; use --smoke on CPU")
        warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
        iters = args.iters if args.iters is not None else (2 if args.smoke else 50)
        if warmup < 0 or iters < 1:
            raise ValueError("--warmup must be >= 0 and --iters >= 1")
        results = run_all(device, args.smoke, warmup, iters, getattr(torch, args.dtype))
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
