#!/usr/bin/env python
"""Rewrite a checkpoint from a tp x ep layout: local gloo ranks load it into that layout and save it.

    python tools/reshard_checkpoint.py --load ckpts/moe --save ckpts/moe_ep2 --tp 1 --ep 2

Storage is layout-independent, so any checkpoint loads in any layout anyway; this checks the target layout
and verifies (bitwise) that nothing changed on the way. Optimizer state is not carried.
"""
import argparse

from megatron_moe.cli import run


def main() -> None:
    from megatron_moe.export.reshard import reshard

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="checkpoint or run directory")
    ap.add_argument("--save", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the target layout")
    ap.add_argument("--ep", type=int, default=1, help="expert-parallel size of the target layout")
    ap.add_argument("--etp", type=int, default=1, help="expert-tensor-parallel size of the target layout")
    ap.add_argument("--no-verify", action="store_true", help="skip the tensor-by-tensor comparison")
    args = ap.parse_args()
    print(f"wrote {reshard(args.load, args.save, args.tp, args.ep, args.etp, verify=not args.no_verify)}")


if __name__ == "__main__":
    run(main)
