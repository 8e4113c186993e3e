#!/usr/bin/env python
"""The planner's suggestions as a markdown table (docs/launch.md "Suggested layouts"): three MoE recipes (the
examples/configs presets as they are) on 8/16/64 GPUs of 40 and 80 GB, each with the layout `megatron-moe plan`
suggests (pipeline stages and their layer split when pp > 1) and its per-GPU memory (the largest stage).

    python tools/plan_table.py > /tmp/table.md

Prints to stdout only; exit 0.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = [("LLaMA-MoE-3.5B (4/16)", "examples/configs/llama_moe_3.5b_4of16.yaml", []),
           ("LLaMA-3-8B, 8 experts top-2", "examples/configs/llama3_8b_moe_8e_top2.yaml", []),
           ("LLaMA-2-70B, 8 experts top-2 (global batch 1024)", "examples/configs/llama2_70b_moe_8e_top2_64gpu.yaml",
            [])]


def main() -> int:
    from megatron_moe.config import load_config
    from megatron_moe.memory_plan import GIB, suggest_layout

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"Produced by `python tools/plan_table.py` ({date.today().isoformat()}, commit {commit}); "
          f"margin 10%, 4 GiB overhead, 8 GPUs per node.\n")
    print("| model | GPUs | GiB/GPU | suggested layout | GiB per GPU (host) |")
    print("| --- | --- | --- | --- | --- |")
    for name, path, overrides in RECIPES:
        cfg = load_config(ROOT / path, overrides)
        for gpus in (8, 16, 64):
            for mem in (40, 80):
                best = suggest_layout(cfg, gpus, float(mem))
                if best is None:
                    print(f"| {name} | {gpus} | {mem} | nothing fits | |")
                    continue
                lay = best.layout
                stages = f" pp={lay.pp}" + (f" [{','.join(map(str, lay.pp_layout))}]" if lay.pp_layout else "")
                stages += f" flush={lay.pp_flush}" if lay.pp_flush else ""
                desc = (f"tp={lay.tp}{'+sp' if lay.sp else ''}{stages if lay.pp > 1 else ''} ep={lay.ep} {lay.sharding}"
                        f"{'+offload' if lay.offload else ''}{' recompute' if lay.recompute else ''} "
                        f"micro_batch={lay.micro_batch}")
                host = f" ({best.host / GIB:.1f})" if lay.offload else ""
                print(f"| {name} | {gpus} | {mem} | {desc} | {best.total_gib:.1f}{host} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
