#!/usr/bin/env python
"""The memory planner against a measurement (megatron_moe/memory_check.py): real training steps of a model with
LLaMA-2-7B's widths (2 layers, 16 experts) on 2 local gloo processes at EP=2 in ZeRO-1, ZeRO-2 and FSDP, peak
memory per category per rank from torch's MemTracker, next to `megatron-moe plan`'s figure.

    python tools/check_memory_plan.py                 # markdown table on stdout (docs/launch.md "Planner check")
    python tools/check_memory_plan.py --modes zero1   # one mode

Needs about 10 GB of host memory and a few minutes on 2 cores. Exit 0 when every compared category is within
--tolerance (default 0.10) of the plan, 1 when one is not (the table says which), 2 on bad input.
"""
import argparse
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from megatron_moe.memory_check import CATEGORIES, check_plan, format_rows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="zero1,zero2,fsdp", help="comma-separated train.sharding modes")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed |measured / planned - 1|")
    p.add_argument("--compare", default=",".join(CATEGORIES), help="categories that decide the exit status")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    compare = [c for c in args.compare.split(",") if c]
    bad = [m for m in modes if m not in ("none", "zero1", "zero2", "fsdp")] + [c for c in compare
                                                                                if c not in CATEGORIES]
    if bad:
        print(f"error: unknown mode or category {bad[0]!r}", file=sys.stderr)
        return 2
    rows = check_plan(sharding_modes=tuple(modes))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"Measured by `python tools/check_memory_plan.py` ({date.today().isoformat()}, commit {commit}, CPU, "
          f"2 gloo processes, fp32).\n")
    print(format_rows(rows))
    off = [(r["sharding"], r["rank"], c) for r in rows for c in compare
           if abs(r["measured"][c] / r["planned"][c] - 1) > args.tolerance]
    for mode, rank, c in off:
        print(f"\n{mode} rank {rank}: {c} outside ±{args.tolerance:.0%} of the plan")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
