"""Set up and run one training job from a Config (what `megatron-moe train` calls on every rank).

    run_training(cfg)       # preflight, init parallel, build model/data, resume or load, train, final eval + save

Start-up order, so that bad input fails before anything is created:
  1. `preflight` (training/preflight.py): config, checkpoint(s), data, tokenizer and run directory, on every rank,
     before any process group exists;
  2. process groups; the model (initialised from train.seed), the data;
  3. RUN_DIR/checkpoints/latest exists -> resume everything from it (model, optimizer, schedule, data sampler and
     domain weights, RNG); else `checkpoint.load` -> load model weights only (its config.json supplied model +
     moe in step 1); else the initialised model;
  4. only then the run directory gets config.yaml, and metrics.jsonl on the first logged record.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..config import Config
from ..parallel import ParallelState, destroy_parallel, init_parallel, seed_all
from .preflight import preflight

log = logging.getLogger(__name__)


def build_trainer(cfg: Config, ps: ParallelState):
    """The model (initialised, then resumed or loaded) on ps.device, the data and the Trainer; cfg is preflighted."""
    from ..checkpoint import load_into
    from ..data import MultiDomainData
    from ..model import build_model, init_weights
    from .trainer import Trainer

    seed_all(cfg.train.seed)
    model = build_model(cfg, ps)
    init_weights(model, cfg.train.seed, cfg.model.init_std)
    model.to(ps.device)
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
    """Train per `cfg` (collective across the launch); returns rank-local step records of this run."""
    preflight(cfg, ps.world_size if ps is not None else None)
    owned = ps is None
    ps = ps or init_parallel(cfg.parallel)
    try:
        trainer = build_trainer(cfg, ps)
        try:
            if trainer.step >= cfg.train.train_steps:
                log.info("run already at step %d of %d; nothing to do", trainer.step, cfg.train.train_steps)
                return []
            return trainer.train()
        finally:
            trainer.close()
    finally:
        if owned:
            destroy_parallel()


__all__ = ["build_trainer", "preflight", "run_training"]
