"""One row of the reproduction: split the dense base (timed), score it right after the split, continue
pre-training on the same tokens in the same order as every other row, score it again, measure its balance.

Cached: a row's directory is named by a hash of the base, the row's options and the schedule; its result.json
is written last and reused.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import MoEConfig
from ..data.local_corpus import LOCAL_DOMAINS
from .base import Base, data_config, domain_tokens, run_config, train_one_process, valid_losses
from .budget import Budget
from .cache import digest, stage
from .methods import CALIBRATED, LOSSLESS, row

log = logging.getLogger(__name__)


def _latest(run_dir: Path) -> Path:
    from ..training.checkpointing import latest_checkpoint

    return latest_checkpoint(run_dir)


def convert_row(name: str, base: Base, b: Budget, root: Path) -> tuple[Path, float, float]:
    """(MoE checkpoint, construction seconds, verify delta or nan) of a row (cached)."""
    from ..construct.convert import ConvertOptions, convert_dense_to_moe, verify_conversion

    kw, _, _ = row(name, b)
    if name in CALIBRATED:
        kw = dict(kw, calib_data=[base.prefixes[d] for d in LOCAL_DOMAINS], calib_tokens=b.calib_tokens,
                  calib_seq_len=b.seq_len, calib_batch=8)
    path = stage(root, f"moe-{kw['method']}", digest(base.key, kw))  # rows with the same split share it
    meta = path.parent / f".{path.name}.json"
    if not path.exists():
        res = convert_dense_to_moe(_latest(base.run_dir), path, ConvertOptions(**kw), progress=False)
        delta = verify_conversion(_latest(base.run_dir), path) if name in LOSSLESS else float("nan")
        meta.write_text(json.dumps({"seconds": res.seconds, "delta": delta}))
    m = json.loads(meta.read_text())
    return path, m["seconds"], m["delta"]


def balance(model: torch.nn.Module, base: Base, b: Budget) -> dict:
    """MaxVio and CV of tokens per expert on the validation data (mean over MoE layers), and the load fractions
    sorted from the busiest expert down (mean over layers), for the plot."""
    from ..analysis.routing import expert_load
    from ..data import MultiDomainData

    data = MultiDomainData(data_config(b, base.prefixes, {d: 1.0 for d in LOCAL_DOMAINS}), b.batch)
    batches = []
    for d in LOCAL_DOMAINS:
        n = min(b.eval_sequences, data.domains[data.domain_names.index(d)].valid.samples_per_epoch)
        bs = min(b.batch, n)
        batches += [t[:, :-1] for t in data.valid_batches(d, n // bs, bs)]
    counts_LE = expert_load(model, batches)
    frac_LE = counts_LE / counts_LE.sum(1, keepdim=True)
    mean = frac_LE.mean(1, keepdim=True)
    max_vio = (frac_LE.max(1).values / mean[:, 0] - 1).mean()
    cv = (frac_LE.std(1, unbiased=False) / mean[:, 0]).mean()
    return {"max_vio": float(max_vio), "cv": float(cv),
            "load_sorted": frac_LE.sort(1, descending=True).values.mean(0).tolist()}


def train_row(name: str, base: Base, b: Budget, root: Path, start: Path, moe_over: dict, data_over: dict,
              refs: dict) -> tuple[Path, float]:
    """Continual pre-training of a row from checkpoint `start` (cached); (run dir, seconds)."""
    from ..checkpoint import read_config

    model, moe, _ = read_config(start)
    data = data_config(b, base.prefixes, domain_tokens(base.prefixes))
    dynamic = data_over.get("sampling") == "dynamic"
    if dynamic:
        data.sampling = "dynamic"
        for dom in data.domains:
            dom.ref_loss = refs[dom.name]
    run = stage(root, f"cpt-{name}", digest(base.key, str(start.name), moe_over, data_over, b.cpt_steps, b.cpt_lr))
    if (run / "cpt.json").is_file():
        return run, json.loads((run / "cpt.json").read_text())["seconds"]
    if run.exists():  # an interrupted run: start it again from scratch (same data order, same result)
        import shutil

        shutil.rmtree(run)
    cfg = run_config(b, model, data, run, b.cpt_steps, b.cpt_lr, warmup=max(1, b.cpt_steps // 10),
                     moe=MoEConfig(**{**moe.__dict__, **moe_over}))
    cfg.checkpoint.load = str(start)
    cfg.mark_explicit([f"moe.{k}" for k in moe_over], "the experiment's MoE settings")
    if dynamic:
        cfg.train.eval_interval = max(1, b.cpt_steps // 4)
        cfg.train.eval_iters = 1
    seconds = train_one_process(cfg)
    (run / "cpt.json").write_text(json.dumps({"seconds": seconds}))
    return run, seconds


def curve(run: Path) -> list:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("loss") is not None and "valid_loss" not in rec:
            out.append((rec["step"], rec["loss"]))
    return out


def run_row(name: str, base: Base, b: Budget, root: Path, refs: dict, downstream=None) -> dict:
    """The row's result (see the module docstring); cached in <run dir>/result.json. With `downstream`
    (reproduce/downstream.py) its task scores after CPT are added under "downstream" (cached on their own)."""
    result = _row_result(name, base, b, root, refs)
    if downstream is not None:
        from .downstream import scores

        run = Path(result.pop("_run"))
        result["downstream"] = scores(downstream, run, base.tokenizer, run)
    else:
        result.pop("_run")
    return result


def _row_result(name: str, base: Base, b: Budget, root: Path, refs: dict) -> dict:
    from .. import load_model
    from ..memory_plan import count_params
    from ..config import Config

    _, moe_over, data_over = row(name, b) if name != "dense" else ({}, {}, {})
    if name == "dense":
        start, seconds, delta = _latest(base.run_dir), 0.0, float("nan")
    else:
        start, seconds, delta = convert_row(name, base, b, root)
    run, cpt_seconds = train_row(name, base, b, root, start, moe_over, data_over, refs)
    if (run / "result.json").is_file():
        return {**json.loads((run / "result.json").read_text()), "_run": str(run)}
    split = load_model(start)
    trained = load_model(run)
    cfg = Config(model=trained.cfg, moe=trained.moe_cfg)
    counts = count_params(cfg)
    result = {"row": name, "construction_s": seconds, "verify_delta": delta, "cpt_s": cpt_seconds,
              "split_loss": valid_losses(split, base, b), "cpt_loss": valid_losses(trained, base, b),
              "curve": curve(run), "total_params": counts.total, "activated_params": counts.activated,
              "experts": trained.moe_cfg.num_experts, "expert_ffn": trained.moe_cfg.ffn_size(trained.cfg)
              if trained.moe_cfg.enabled else 0}
    if trained.moe_cfg.enabled:
        result.update(balance(trained, base, b))
    (run / "result.json").write_text(json.dumps(result, indent=1))
    log.info("row %s: split %s -> after CPT %s", name, _fmt(result["split_loss"]), _fmt(result["cpt_loss"]))
    return {**result, "_run": str(run)}


def _fmt(losses: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in losses.items())
