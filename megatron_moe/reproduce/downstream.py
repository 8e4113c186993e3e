"""Downstream-task columns of the reproduction (optional): every row's model after continual pre-training, and the
dense base, on lm-evaluation-harness tasks, in-process (analysis/downstream.py).

    python -m megatron_moe.reproduce --out runs/repro --include-path my_tasks/ [--tasks a,b] [--num-fewshot 0]

Without a task directory (and in CI) the reproduction reports perplexity only. A row's scores are cached next to
its run under a name hashed from the task files, the task list and the options, so a rerun reuses them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..atomic import write_text_atomic
from .cache import digest, file_digest

log = logging.getLogger(__name__)


@dataclass
class Downstream:
    """Which harness tasks the reproduction adds as columns."""

    include_path: Optional[str] = None
    """A directory of local task YAML files (the harness's --include-path)."""
    tasks: Optional[list] = None
    """Task names; default: every task defined under include_path."""
    num_fewshot: Optional[int] = None
    """Few-shot examples (default: each task's own)."""
    limit: Optional[float] = None
    """Examples per task (a count, or a fraction below 1)."""

    def resolved_tasks(self) -> list[str]:
        from ..analysis.downstream import local_tasks
        from ..errors import UserError

        if self.tasks:
            return list(self.tasks)
        if not self.include_path:
            raise UserError("downstream columns need --tasks or --include-path")
        found = local_tasks(self.include_path)
        if not found:
            raise UserError(f"--include-path {self.include_path} defines no task")
        return found

    def check(self) -> list[str]:
        """The task names, each checked to exist (UserError otherwise)."""
        from ..analysis.downstream import task_manager

        tasks = self.resolved_tasks()
        task_manager(tasks, [self.include_path] if self.include_path else None)
        return tasks

    def key(self) -> str:
        import lm_eval

        files = sorted(p for p in Path(self.include_path).rglob("*") if p.is_file()) if self.include_path else []
        return digest(asdict(self), self.resolved_tasks(), file_digest(*files) if files else "",
                      getattr(lm_eval, "__version__", ""))


def scores(spec: Downstream, load: Path, tokenizer: Path, cache_dir: Path) -> dict:
    """{task: {metric: value}} of checkpoint or run `load` (cached in cache_dir)."""
    from ..analysis.downstream import evaluate_tasks

    cached = Path(cache_dir) / f"downstream-{spec.key()}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    res = evaluate_tasks(load, spec.resolved_tasks(), include_path=[spec.include_path] if spec.include_path else None,
                         num_fewshot=spec.num_fewshot, limit=spec.limit, tokenizer=tokenizer, bootstrap_iters=0,
                         progress=False)
    out = {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float))
                  and not k.split(",")[0].endswith("_stderr") and k != "sample_len"}
           for task, metrics in res["results"].items()}
    write_text_atomic(cached, json.dumps(out, indent=1))
    return out


def markdown(res: dict) -> str:
    """The downstream table of the report ('' without downstream results)."""
    d = res.get("downstream")
    if not d:
        return ""
    tasks = d["tasks"]
    metric = {t: _metric(res["base"]["downstream"].get(t, {})) for t in tasks}
    where = f"local tasks from `{d['include_path']}`" if d.get("include_path") else "harness tasks"
    shots = "each task's own few-shot setting" if d.get("num_fewshot") is None else f"{d['num_fewshot']}-shot"
    limit = "" if d.get("limit") is None else f", at most {d['limit']:g} examples per task"
    lines = [f"Downstream tasks (lm-evaluation-harness, {where}, {shots}{limit}; in-process, after CPT):", "",
             "| model | " + " | ".join(f"{t} {metric[t]}" for t in tasks) + " |",
             "| --- | " + " | ".join("---" for _ in tasks) + " |"]
    for name, scored in [("dense base", res["base"]["downstream"])] + [(r["row"], r["downstream"]) for r in res["rows"]]:
        lines.append(f"| {name} | " + " | ".join(_fmt(scored.get(t, {}).get(metric[t])) for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def _metric(metrics: dict) -> str:
    from ..analysis.downstream import HEADLINE_METRICS

    return next((name for name in HEADLINE_METRICS if name in metrics), next(iter(metrics), ""))


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"
