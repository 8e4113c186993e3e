"""Set up and run one training job from a Config (what `megatron-moe train` calls on every rank).

    run_training(cfg)       # preflight, init parallel, build model/data, resume or load, train, final eval + save

Start-up order, so that bad input fails before anything is created:
  1. `preflight` (training/preflight.py): config, checkpoint(s), data, tokenizer and run directory (also: no live
     job holds it), on every rank, before any process group exists;
  2. process groups; then global rank 0 takes the run directory's lock (training/run_lock.py; every rank learns
     the outcome, so a lost race is the same one line everywhere) and removes what a dead job left half-written;
  3. the model (initialised from train.seed; with train.sharding zero2 / fsdp then wrapped by FSDP2, which moves
     only each rank's shards to the device: parallel/fsdp.py), the data;
  4. RUN_DIR/checkpoints/latest exists -> resume everything from it (model, optimizer, schedule, data sampler and
     domain weights, RNG); else `checkpoint.load` -> load model weights only (its config.json supplied model +
     moe in step 1); else the initialised model;
  5. only then the run directory gets config.yaml, and metrics.jsonl on the first logged record.
While it trains, train.stop_signals (SIGTERM, SIGUSR1) stop it gracefully: the step finishes, a checkpoint is
saved and TrainingStopped is raised (the train command exits with 75; signals.py).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

from ..config import Config
from ..errors import UserError
from ..parallel import ParallelState, destroy_parallel, init_parallel, seed_all
from .preflight import preflight

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Training stopped on a stop signal after saving a checkpoint; the same command resumes it."""

    def __init__(self, signal_name: str, step: int, checkpoint):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint}; run the same command "
                         f"again to resume")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


@contextlib.contextmanager
def run_dir_lock(cfg: Config, ps: ParallelState):
    """Global rank 0 holds RUN_DIR/.lock for the block; a failure to take it is raised on every rank."""
    from ..parallel import all_gather_object, world_group
    from .run_lock import RunLock

    lock, message = None, ""
    if ps.is_main and cfg.logging.lock_run_dir:
        try:
            lock = RunLock(cfg.logging.run_dir).acquire()
        except UserError as err:
            message = str(err)
    messages = all_gather_object(message, world_group())
    if any(messages):
        if lock is not None:
            lock.release()
        raise UserError(next(m for m in messages if m))
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def prepare_model(cfg: Config, ps: ParallelState, model) -> None:
    """Apply train.sharding to the initialised model: FSDP2 for zero2 / fsdp (shards go to ps.device, or stay in
    host memory with train.offload_optimizer), else move it to ps.device (zero1 shards only the optimizer)."""
    from ..parallel.fsdp import shard_model, uses_fsdp
    from .trainer import uses_bf16

    mode = cfg.train.sharding
    if uses_fsdp(ps, mode):
        shard_model(model, ps, mode, bf16=uses_bf16(cfg, ps.device), offload=cfg.train.offload_optimizer)
        return
    if mode != "none" and ps.world_size == 1:
        log.info("train.sharding=%s in a single process without torch.distributed: nothing to shard over", mode)
    model.to(ps.device)


def build_trainer(cfg: Config, ps: ParallelState):
    """The model (initialised, then resumed or loaded) on ps.device, the data and the Trainer; cfg is preflighted."""
    from ..checkpoint import load_into
    from ..data import MultiDomainData
    from ..model import build_model, init_weights
    from .trainer import Trainer

    seed_all(cfg.train.seed)
    model = build_model(cfg, ps)
    init_weights(model, cfg.train.seed, cfg.model.init_std)
    prepare_model(cfg, ps, model)
    seed_all(cfg.train.seed, offset=1)  # training RNG: identical on every rank
    data = MultiDomainData(cfg.data, cfg.train.global_batch_size, ps.dp_rank, ps.dp_size,
                           vocab_size=cfg.model.vocab_size)
    trainer = Trainer(cfg, ps, model, data, cfg.logging.run_dir)
    if not trainer.maybe_resume() and cfg.checkpoint.load:
        load_into(model, cfg.checkpoint.load)
        log.info("loaded model weights from %s", cfg.checkpoint.load)
    if ps.is_main:  # the resolved config, for the record (the checkpoints carry their own copy)
        from ..atomic import write_text_atomic

        import yaml

        run_dir = Path(cfg.logging.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return trainer


def run_training(cfg: Config, ps: Optional[ParallelState] = None) -> list[dict]:
    """Train per `cfg` (collective across the launch); returns rank-local step records of this run.
    Raises TrainingStopped after a graceful stop on one of train.stop_signals."""
    from ..signals import stop_requests

    preflight(cfg, ps.world_size if ps is not None else None)
    owned = ps is None
    with stop_requests(cfg.train.stop_signals) as stop:
        ps = ps or init_parallel(cfg.parallel)
        try:
            with run_dir_lock(cfg, ps):
                trainer = build_trainer(cfg, ps)
                trainer.stop = stop
                try:
                    if trainer.step >= cfg.train.train_steps:
                        log.info("run already at step %d of %d; nothing to do", trainer.step,
                                 cfg.train.train_steps)
                        return []
                    history = trainer.train()
                    if trainer.stopped_by:
                        raise TrainingStopped(trainer.stopped_by, trainer.step, trainer.last_saved)
                    return history
                finally:
                    trainer.close()
        finally:
            if owned:
                destroy_parallel()


__all__ = ["TrainingStopped", "build_trainer", "preflight", "run_training", "run_dir_lock"]
