"""Trainer checkpoints: sharded, atomic, resumable in any parallel layout (docs/training.md).

    RUN_DIR/checkpoints/
      step_00000100/        config.json, model/ (DCP, checkpoint.save_model), optimizer/ (DCP),
                            trainer_state.json (step, tokens, schedule, data sampler state, per-rank RNG)
      .step_00000200.tmp-HOST-PID/   a save in progress (or killed): ignored; removed when it fails, and by the
                            next job that takes the run directory's lock (training/run_lock.py)
      latest                name of the newest complete checkpoint (written last)

Save is collective: rank 0 stages `.step_N.tmp-HOST-PID` (atomic.AtomicDir), all ranks write their model and
optimizer shards into it (DCP writes each global chunk once), rank 0 writes trainer_state.json and config.json,
the ranks agree that everything was written, rank 0 renames the directory to `step_N`, then replaces `latest`
(write + rename) and prunes to `keep_last`. A save that fails or is killed at any point leaves `latest` naming
the previous complete checkpoint.

Optimizer state is stored per parameter name (`<name>.exp_avg`, `<name>.exp_avg_sq` with the parameter's global
shape, `<name>.step`), written as DTensors by the ranks that own the state (all replicas with sharding none, the
owning data-parallel rank with zero1, every rank its FSDP2 shard with zero2 / fsdp), so a checkpoint saved at one
TP/EP/DP/sharding layout loads into another.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..checkpoint import as_global, config_dict, load_into, local_of, resolve, save_model
from ..checkpoint.format import CARRIED_FILES, CONFIG, LATEST
from ..checkpoint.store import dcp_load, dcp_save, part_metadata
from ..config import Config
from ..errors import CheckpointError
from ..model.sharding import sharding_table
from ..atomic import write_text_atomic
from ..parallel import ParallelState, all_gather_object, barrier, is_distributed, world_group
from .optimizer import TrainOptimizer
from .rng import get_rng_state, set_rng_state

log = logging.getLogger(__name__)

OPTIMIZER_DIR, TRAINER_STATE = "optimizer", "trainer_state.json"
STEP_RE = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete step_N checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()
             and (p / CONFIG).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The checkpoint `RUN_DIR/checkpoints/latest` names, or None when there is none yet."""
    root = Path(run_dir) / "checkpoints"
    if not (root / LATEST).is_file():
        return None
    return resolve(root)


# --------------------------------------------------------------------------------------- optimizer
def save_optimizer(opt: TrainOptimizer, model: nn.Module, path: Path) -> None:
    table = sharding_table(model)
    sd = {}
    for name, st in opt.owned_states().items():
        sd[f"{name}.exp_avg"] = as_global(st["exp_avg"].detach(), table[name])
        sd[f"{name}.exp_avg_sq"] = as_global(st["exp_avg_sq"].detach(), table[name])
        sd[f"{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).detach().reshape(1).cpu()
    dcp_save(sd, path, no_dist=not is_distributed())


@torch.no_grad()
def load_optimizer(opt: TrainOptimizer, model: nn.Module, path: Path) -> int:
    """Fill this rank's optimizer state from `path` (any saved layout); returns the number of parameters."""
    table = sharding_table(model)
    md = part_metadata(path)
    targets = {}
    for name, p in opt.owned_params().items():
        key = f"{name}.exp_avg"
        if key not in md:
            continue
        want = table[name].global_shape(p.shape)
        if md[key][0] != tuple(want):
            raise CheckpointError(f"{path}: optimizer state of {name} has shape {md[key][0]}, the model expects "
                                  f"{tuple(want)}")
        for suffix in ("exp_avg", "exp_avg_sq"):  # like the parameter: a DTensor shard under FSDP2
            targets[f"{name}.{suffix}"] = as_global(torch.empty_like(p.detach(), dtype=torch.float32), table[name])
        targets[f"{name}.step"] = torch.empty(1, dtype=torch.float32)
    dcp_load(targets, path, no_dist=not is_distributed())

    def fetch(name: str, p: torch.Tensor) -> Optional[dict]:
        if f"{name}.exp_avg" not in targets:
            return None
        local = {s: local_of(targets[f"{name}.{s}"]).to(p.dtype).clone() for s in ("exp_avg", "exp_avg_sq")}
        if hasattr(p, "to_local"):  # FSDP2: the state is a DTensor placed like its parameter
            from torch.distributed.tensor import DTensor

            local = {s: DTensor.from_local(t, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                           stride=p.stride()) for s, t in local.items()}
        step = targets[f"{name}.step"].reshape(())
        return {"step": step.to(p.device) if p.is_cuda else step.clone(), **local}

    return opt.load_owned_states(fetch)


# ---------------------------------------------------------------------------------------- save/load
def save_checkpoint(run_dir: str | Path, cfg: Config, model: nn.Module, opt: Optional[TrainOptimizer],
                    trainer_state: dict, ps: ParallelState, keep_last: int = 3) -> Path:
    """Collective: write RUN_DIR/checkpoints/step_N atomically, point `latest` at it, prune old ones.
    Rank 0 stages the directory (atomic.AtomicDir); every rank writes its shards into it; the ranks agree that
    every write succeeded before rank 0 renames it into place. Any failure, on any rank, removes the temporary
    directory and leaves `latest` naming the previous checkpoint; a full disk is one line naming the checkpoint."""
    from ..atomic import AtomicDir, OutputError, writing

    root = Path(run_dir) / "checkpoints"
    step = int(trainer_state["step"])
    final = root / checkpoint_name(step)
    staged = None
    if ps.is_main:
        with writing(root):
            root.mkdir(parents=True, exist_ok=True)
        staged = AtomicDir(final, overwrite=True)  # a re-save of the same step (e.g. after resuming from it)
    tmp = Path(all_gather_object(str(staged.tmp) if staged else "", world_group())[0])
    try:
        failure = ""
        try:
            with writing(final):
                save_model(model, tmp)
                if opt is not None:
                    save_optimizer(opt, model, tmp / OPTIMIZER_DIR)
        except OutputError as err:
            failure = str(err)
        rng = all_gather_object(get_rng_state(), world_group())
        if ps.is_main and not failure:
            state = dict(trainer_state, rng=rng, world_size=ps.world_size,
                         layout={"tp": ps.tp_size, "dp": ps.dp_size, "ep": ps.ep_size, "etp": ps.etp_size,
                                 "edp": ps.edp_size, "sp": ps.sp, "sharding": cfg.train.sharding,
                                 "offload_optimizer": cfg.train.offload_optimizer})
            try:
                with writing(final):
                    _write_json(tmp / TRAINER_STATE, state)
                    _carry_files(cfg, tmp)
                    _write_json(tmp / CONFIG, config_dict(cfg.model, cfg.moe, {"config": cfg.to_dict()}))
            except OutputError as err:
                failure = str(err)
        failures = [f for f in all_gather_object(failure, world_group()) if f]
        if failures:
            raise OutputError(failures[0])
        if ps.is_main:
            staged.commit()
            write_text_atomic(root / LATEST, final.name)
            _prune(root, keep_last, keep=final)
            log.info("saved checkpoint %s", final)
    except BaseException:
        if staged is not None:
            staged.abort()
        raise
    barrier()
    return final


def _carry_files(cfg: Config, dest: Path) -> None:
    """Copy CARRIED_FILES from the checkpoint the run started from (or data.tokenizer) into `dest`."""
    sources = []
    if cfg.checkpoint.load:
        src = Path(cfg.checkpoint.load)
        sources.append(latest_checkpoint(src) or src)
    previous = latest_checkpoint(cfg.logging.run_dir)  # a resumed run keeps what its earlier saves carried
    if previous is not None:
        sources.append(previous)
    tok = cfg.data.tokenizer
    if tok and Path(tok).is_file():
        shutil.copy2(tok, dest / ("tokenizer.json" if tok.endswith(".json") else "tokenizer.model"))
    for src in sources:
        for name in CARRIED_FILES:
            if (src / name).is_file() and not (dest / name).exists():
                shutil.copy2(src / name, dest / name)


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    if keep_last <= 0:
        return
    for old in list_checkpoints(root)[:-keep_last]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def read_trainer_state(ckpt: Path) -> dict:
    path = ckpt / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: no {TRAINER_STATE}; not a trainer checkpoint (use checkpoint.load for "
                              f"weights only)")
    from ..structured import read_json

    return read_json(path, expect=dict, error=CheckpointError, what="trainer state", max_nodes=50_000_000)


def load_checkpoint(ckpt: str | Path, model: nn.Module, opt: Optional[TrainOptimizer],
                    ps: ParallelState) -> dict:
    """Load model, optimizer (if saved) and this rank's RNG state; returns the trainer state dict.
    A different world size restores no RNG state (the caller reseeds) and logs it."""
    ckpt = resolve(ckpt)
    state = read_trainer_state(ckpt)
    load_into(model, ckpt)
    if opt is not None and (ckpt / OPTIMIZER_DIR).is_dir():
        n = load_optimizer(opt, model, ckpt / OPTIMIZER_DIR)
        log.info("optimizer state restored for %d parameters", n)
    elif opt is not None:
        log.warning("%s has no optimizer state; AdamW moments start from zero", ckpt)
    rng = state.get("rng") or []
    same_layout = state.get("world_size") == ps.world_size and len(rng) == ps.world_size
    if same_layout:
        try:
            set_rng_state(rng[ps.rank])
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{ckpt / TRAINER_STATE}: unusable RNG state ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None
    state["rng_restored"] = same_layout
    log.info("resumed from %s at step %d (saved layout %s)", ckpt, state["step"], state.get("layout"))
    return state
