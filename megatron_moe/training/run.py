"""Set up and run one training job from a Config (what `python -m megatron_moe.train` calls).

    run_training(cfg)       # init parallel, build model/data, resume or load, train, final eval + checkpoint

Start-up order: RUN_DIR/checkpoints/latest exists -> resume everything from it (model, optimizer, schedule,
data sampler and domain weights, RNG); else `checkpoint.load` -> load model weights only (a converted MoE or any
checkpoint; its config.json supplies model + moe, see prepare_config); else initialise from train.seed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..config import Config, dump_config
from ..parallel import ParallelState, destroy_parallel, detect_launch_env, init_parallel, seed_all

log = logging.getLogger(__name__)


def prepare_config(cfg: Config, world_size: Optional[int] = None) -> Config:
    """Apply the model/moe config of `checkpoint.load` (or of the run's own latest checkpoint) and validate."""
    from ..checkpoint import apply_checkpoint_config
    from . import checkpointing as ckpt

    latest = ckpt.latest_checkpoint(cfg.logging.run_dir)
    source = latest or cfg.checkpoint.load
    if source is not None:
        apply_checkpoint_config(cfg, source)
    world = world_size if world_size is not None else detect_launch_env().world_size
    return cfg.validate(world)


def build_everything(cfg: Config, ps: ParallelState):
    """Write RUN_DIR/config.yaml; build the model (initialised, resumed or loaded) on ps.device, the data and the
    trainer."""
    from ..checkpoint import load_model
    from ..data import MultiDomainData
    from ..model import build_model, init_weights
    from .trainer import Trainer

    run_dir = Path(cfg.logging.run_dir)
    if ps.is_main:  # the resolved config, for the record (the checkpoints carry their own copy)
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        dump_config(cfg, tmp)
        tmp.replace(run_dir / "config.yaml")
    seed_all(cfg.train.seed)
    model = build_model(cfg, ps)
    init_weights(model, cfg.train.seed, cfg.model.init_std)
    model.to(ps.device)
    # training RNG: identical on every rank (router noise draws one shared key per forward, model/moe/noise.py)
    seed_all(cfg.train.seed, offset=1)
    data = MultiDomainData(cfg.data, cfg.train.global_batch_size, ps.dp_rank, ps.dp_size)
    trainer = Trainer(cfg, ps, model, data, cfg.logging.run_dir)
    if not trainer.maybe_resume() and cfg.checkpoint.load:
        load_model(model, cfg.checkpoint.load)
        log.info("loaded model weights from %s", cfg.checkpoint.load)
    return trainer


def run_training(cfg: Config, ps: Optional[ParallelState] = None) -> list[dict]:
    """Train per `cfg` (collective across the launch); returns rank-local step records of this run."""
    cfg = prepare_config(cfg, ps.world_size if ps is not None else None)
    owned = ps is None
    ps = ps or init_parallel(cfg.parallel)
    trainer = build_everything(cfg, ps)
    try:
        if trainer.step >= cfg.train.train_steps:
            log.info("run already at step %d of %d; nothing to do", trainer.step, cfg.train.train_steps)
            return []
        return trainer.train()
    finally:
        trainer.close()
        if owned:
            destroy_parallel()
