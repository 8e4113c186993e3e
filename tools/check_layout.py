#!/usr/bin/env python
"""Check that a parallel layout computes the same logits as one process.

    torchrun --nproc-per-node 2 tools/check_layout.py --load CKPT --tp 2 [--sp] [--ep 1] [--tol 1e-4]
"""
import argparse
import sys

from megatron_moe.cli import run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="checkpoint directory (ours)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--etp", type=int, default=None)
    ap.add_argument("--sp", action="store_true", help="sequence parallel")
    ap.add_argument("--tol", type=float, default=1e-4, help="fail above this max |delta| (fp32)")
    args = ap.parse_args()
    from megatron_moe.layout_check import check_layout

    delta = check_layout(args.load, args.tp, args.ep, args.etp, args.sp)
    if delta > args.tol:
        print(f"error: max |delta| {delta:.3g} exceeds tolerance {args.tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
