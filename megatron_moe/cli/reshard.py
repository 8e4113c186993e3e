"""Rewrite a checkpoint from a tp x ep layout: local gloo ranks load it into that layout and save it.

    megatron-moe reshard --load ckpts/moe --save ckpts/moe_ep2 --tp 1 --ep 2

Storage is layout-independent, so any checkpoint loads in any layout anyway; this checks the target layout
and verifies (bitwise) that nothing changed on the way. Optimizer state is not carried.
"""
from __future__ import annotations

from .common import add_load, add_save


IMPORTS = ("megatron_moe.checkpoint.reshard",)  # what main needs, imported at start-up (cli/__init__.py)


def add_arguments(p) -> None:
    add_load(p, "checkpoint or run directory")
    add_save(p, "output checkpoint directory (must not exist)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the target layout")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel size of the target layout")
    p.add_argument("--etp", type=int, default=1, help="expert-tensor-parallel size of the target layout")
    p.add_argument("--no-verify", action="store_true", help="skip the tensor-by-tensor comparison")


def main(args) -> int:
    from ..atomic import check_output
    from ..checkpoint.reshard import reshard

    check_output(args.save)
    print(f"wrote {reshard(args.load, args.save, args.tp, args.ep, args.etp, verify=not args.no_verify)}")
    return 0
