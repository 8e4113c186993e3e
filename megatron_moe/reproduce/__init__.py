"""The LLaMA-MoE reproduction at CPU scale: a dense LLaMA pretrained here on local text, split into experts with
every construction method (and the techniques published since), each continually pre-trained on the same tokens.

    python -m megatron_moe.reproduce --out runs/repro --budget quick|full [--rows random,gradient] [--docs docs]
        [--include-path TASK_DIR [--tasks a,b]]      # + downstream-task columns (lm-evaluation-harness)

Stages and rows are cached by content hash under --out, so a rerun reuses what is already built. Results:
OUT/results.json, OUT/report.md, OUT/cpt_curves.png, OUT/expert_load.png (docs/reproduction.md explains them).
"""
from .run import reproduce

__all__ = ["reproduce"]
