"""Downstream tasks with EleutherAI's lm-evaluation-harness, used as a library (docs/evaluation.md).

    res = evaluate_tasks("runs/x", ["arc_easy", "piqa"], num_fewshot=0, batch_size=8)   # our checkpoint, in-process
    res = evaluate_tasks("hf/x-mixtral", ["arc_easy"])          # an HF directory: the harness's own HF backend
    print(results_table(res)); res["results"]["arc_easy"]["acc,none"]

Task names, few-shot, limit, batch size, `--include-path` and the results (table and JSON) are the harness's own.
A checkpoint of ours runs through analysis/harness_lm.py (any layout, no export); an HF model directory (an export)
through the harness's HF backend, exactly what `lm_eval --model hf --model_args pretrained=DIR` runs. The two
give the same numbers on the same checkpoint (tests/evaluate/test_evaluate_tasks.py).

Local tasks: `include_path` directories of task YAML files. When every requested name is found there, only those
directories are indexed (the harness's ~15k built-in task files are not scanned) and nothing is fetched: the
harness's `dataset_path: json` with local `data_files` reads them through `datasets` without the network.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError

log = logging.getLogger(__name__)
_QUIET = ("lm_eval", "lm-eval", "datasets", "evaluate", "accelerate", "transformers", "httpx", "huggingface_hub")


def is_hf_model_dir(path: str | Path) -> bool:
    """An HF model directory (config.json with a model_type, not one of our checkpoints or run directories)."""
    from ..checkpoint.format import is_checkpoint

    p = Path(path)
    if not (p / "config.json").is_file() or is_checkpoint(p) or (p / "latest").is_file() or (p / "checkpoints").is_dir():
        return False
    try:
        return "model_type" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False


def task_manager(tasks: Sequence[str], include_path: Optional[Sequence[str | Path]] = None):
    """A harness TaskManager that knows `tasks`: the include paths alone when they define every name, else the
    built-in tasks too. Unknown names are a UserError listing them."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_path or ()]
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"--include-path {p} is not a directory")
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if _missing(local, tasks) == []:
            return local
    tm = TaskManager(include_path=paths or None)
    missing = _missing(tm, tasks)
    if missing:
        where = f" in {', '.join(paths)} or" if paths else ""
        raise UserError(f"unknown task(s) {', '.join(missing)}: not found{where} among the harness's tasks "
                        f"(`lm_eval ls tasks` lists them)")
    return tm


def _missing(tm, tasks: Sequence[str]) -> list[str]:
    from lm_eval import utils

    return [t for t in tasks if not utils.pattern_match([t], tm.all_tasks)]


def local_tasks(include_path: str | Path) -> list[str]:
    """The tasks (not groups or tags) defined by the YAML files under `include_path`, sorted."""
    from lm_eval.tasks import TaskManager

    return sorted(TaskManager(include_path=str(include_path), include_defaults=False).all_subtasks)


def evaluate_tasks(load: str | Path, tasks: Sequence[str], *, include_path: Optional[Sequence[str | Path]] = None,
                   num_fewshot: Optional[int] = None, limit: Optional[float] = None, batch_size: int = 8,
                   device: str = "cpu", dtype: str = "fp32", max_length: Optional[int] = None,
                   tokenizer: Optional[str | Path] = None, model_args: Optional[dict] = None,
                   bootstrap_iters: int = 100000, log_samples: bool = False, progress: bool = True) -> dict:
    """The harness's results dict (JSON-safe) for checkpoint or HF directory `load` on `tasks` (module docstring)."""
    import lm_eval

    from ..dtypes import to_dtype

    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    tm = task_manager(tasks, include_path)  # checked before the model loads
    hf = is_hf_model_dir(load)
    if hf:
        if tokenizer is not None:
            raise UserError("--tokenizer is for checkpoints of ours; an HF directory brings its own tokenizer")
        args = {"pretrained": str(load), "dtype": str(to_dtype(dtype)).replace("torch.", ""),
                **({"max_length": max_length} if max_length else {}), **(model_args or {})}
        model, model_name = "hf", "hf"
    else:
        if model_args:
            raise UserError("--model-args are passed to the harness's HF backend; --load here is a checkpoint of ours")
        from .harness_lm import MegatronMoeLM

        model = MegatronMoeLM.from_checkpoint(load, batch_size=batch_size, device=device, dtype=to_dtype(dtype),
                                              max_length=max_length, tokenizer=tokenizer, progress=progress)
        args, model_name = {"load": str(load)}, "megatron_moe"
    res = lm_eval.simple_evaluate(model=model, model_args=args if hf else None, tasks=list(tasks),
                                  num_fewshot=num_fewshot, limit=_limit(limit), batch_size=batch_size, device=device,
                                  bootstrap_iters=bootstrap_iters, log_samples=log_samples, task_manager=tm)
    res["config"]["model"], res["config"]["model_args"] = model_name, args
    return json_safe(res)


def _limit(limit: Optional[float]):
    if limit is None:
        return None
    if limit <= 0:
        raise UserError(f"--limit={limit} must be > 0 (a count, or a fraction below 1)")
    return int(limit) if limit >= 1 and float(limit).is_integer() else limit


def json_safe(res: dict) -> dict:
    """The results with everything JSON cannot hold turned into what the harness writes for it."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(res, default=handle_non_serializable))


def results_table(res: dict) -> str:
    """The harness's results table (and its groups table when there are groups)."""
    from lm_eval.utils import make_table

    out = make_table(res)
    if res.get("groups"):
        out += "\n" + make_table(res, "groups")
    return out


# the metric a report shows for a task, first found: accuracy, then generation, then perplexity-like
HEADLINE_METRICS = ("acc", "acc_norm", "exact_match", "word_perplexity", "perplexity", "bits_per_byte")


def headline(res: dict, task: str) -> Optional[tuple[str, float]]:
    """(metric, value) a report shows for `task` in a results dict (HEADLINE_METRICS order)."""
    metrics = {k.split(",")[0]: v for k, v in res.get("results", {}).get(task, {}).items()
               if isinstance(v, (int, float))}
    for name in HEADLINE_METRICS:
        if name in metrics:
            return name, float(metrics[name])
    return None
