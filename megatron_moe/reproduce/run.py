"""Run the reproduction end to end (see the package docstring)."""
from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from .base import build_base, model_config, unigram_losses, valid_losses
from .budget import BUDGETS
from .downstream import Downstream, scores
from .experiment import run_row
from .methods import ROWS
from .report import write

log = logging.getLogger(__name__)


def _environment() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"commit": commit, "date": datetime.date.today().isoformat(),
            "machine": " ".join(x for x in (platform.machine(), platform.processor()) if x)
                       + f" ({os.cpu_count()} CPUs)",
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def reproduce(out: str | Path, budget: str = "quick", rows: Optional[Sequence[str]] = None,
              progress: bool = False, downstream: Optional[Downstream] = None) -> dict:
    """Build (or reuse) the dense base, run every row, write the results; returns results.json's content.
    `downstream`: also score the dense base and every row on lm-evaluation-harness tasks (reproduce/downstream.py)."""
    from .. import load_model
    from ..memory_plan import count_params
    from ..config import Config

    t0 = time.perf_counter()
    b = BUDGETS[budget]
    tasks = downstream.check() if downstream else None  # bad task options fail before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(b.seed)
    base = build_base(out, b, progress)
    dense = load_model(base.run_dir)
    refs = valid_losses(dense, base, b)
    res = {"budget": b.as_dict(), "environment": _environment(),
           "base": {"valid": refs, "pretrain_s": base.seconds,
                    "params": count_params(Config(model=model_config(b, b.vocab))).total},
           "unigram": unigram_losses(base, b), "rows": []}
    for name in rows or ROWS:
        t = time.perf_counter()
        res["rows"].append(run_row(name, base, b, out, refs, downstream))
        log.info("row %s done in %.0f s", name, time.perf_counter() - t)
    if downstream:
        res["downstream"] = {**asdict(downstream), "tasks": tasks}
        res["base"]["downstream"] = scores(downstream, base.run_dir, base.tokenizer, base.run_dir)
    res["total_minutes"] = (time.perf_counter() - t0) / 60
    return write(res, out)
