"""Check that a parallel layout computes the same logits as one process (exit 1 when it does not).

    torchrun --nproc-per-node 2 -m megatron_moe.cli check-layout --load CKPT --tp 2 [--sp] [--ep 1] [--tol 1e-4]
    torchrun --nproc-per-node 2 tools/check_layout.py --load CKPT --tp 2 --sp
"""
from __future__ import annotations

from .common import add_load


def add_arguments(p) -> None:
    add_load(p, "checkpoint directory (ours)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--etp", type=int, default=None)
    p.add_argument("--sp", action="store_true", help="sequence parallel")
    p.add_argument("--tol", type=float, default=1e-4, help="fail above this max |delta| (fp32)")


def main(args) -> int:
    import sys

    from ..layout_check import check_layout

    delta = check_layout(args.load, args.tp, args.ep, args.etp, args.sp)
    if not delta <= args.tol:  # NaN fails
        print(f"error: max |delta| {delta:.3g} exceeds tolerance {args.tol:g}", file=sys.stderr)
        return 1
    return 0
