"""Everything a training job can check before a process group, an output directory or a model exists.

    report = preflight(cfg, world_size)     # ConfigError / DataError / CheckpointError / OutputError: one line

Every rank runs it at start-up (same config, same files, same answer), and `megatron-moe launch` and
`megatron-moe train --check` run it once up front, so bad input costs seconds, not a scheduled job. Checks:
  1. the model/moe config: from the run's latest checkpoint (resume) or `checkpoint.load`, with any model.* or
     moe.* key the user set explicitly compared against it (training-time moe knobs may differ; anything that
     changes the architecture is refused, since the checkpoint supplies the model);
  2. the whole config for this world size (divisibility, batch split, every section's ranges);
  3. the checkpoint(s): config.json, index, every part's metadata (safe reader) with names and global shapes
     equal to the model's; for a resume also trainer_state.json and the optimizer part's metadata;
  4. the data: every domain's .bin/.idx pair, enough tokens for a sample, validation samples when evaluating,
     every token id below model.vocab_size (scanned when small enough, else checked per batch), and the
     tokenizer's size;
  5. the run directory can be created or written, and no live job holds its lock (training/run_lock.py);
  6. the sizes the config implies, before anything is allocated: the step's token batch against the host's
     memory, and the memory plan against the device's (check_memory).
Nothing is written.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import Config, ConfigError

log = logging.getLogger(__name__)

# moe.* knobs that change training, not the parameters: a run may set them differently from its checkpoint
TRAIN_TIME_MOE = frozenset({"aux_loss_coeff", "z_loss_coeff", "noisy_gate", "noise_epsilon", "switch_jitter",
                            "bias_update_rate", "capacity_factor", "use_kernels", "balance_scope"})
TRAIN_TIME_MODEL = frozenset({"max_seq_len", "init_std"})


@dataclass
class PreflightReport:
    world_size: int
    source: Optional[str] = None        # checkpoint the model comes from (None: initialised from train.seed)
    resume: bool = False
    domains: dict = field(default_factory=dict)   # name -> train samples per epoch

    def summary(self) -> str:
        src = f"{'resume from' if self.resume else 'weights from'} {self.source}" if self.source else "new model"
        doms = ", ".join(f"{k} ({v} samples/epoch)" for k, v in self.domains.items())
        return f"preflight ok: world size {self.world_size}, {src}; data {doms}"


def apply_checkpoint_model(cfg: Config, ckpt) -> None:
    """cfg.model / cfg.moe := the checkpoint's, after comparing the keys the user set explicitly."""
    from ..checkpoint import read_config

    model, moe, _ = read_config(ckpt)
    theirs = {"model": model, "moe": moe}
    for key, source in sorted(cfg.explicit.items()):
        if key == "model.preset":
            log.info("the model preset set in %s does not apply: %s supplies the model", source, ckpt)
            continue
        section, name = key.split(".", 1)
        mine, stored = getattr(getattr(cfg, section), name), getattr(theirs[section], name)
        if mine == stored:
            continue
        if name in (TRAIN_TIME_MOE if section == "moe" else TRAIN_TIME_MODEL):
            setattr(theirs[section], name, mine)
            log.info("%s=%r from the config (the checkpoint has %r)", key, mine, stored)
            continue
        raise ConfigError(f"{key}={mine!r} (set in {source}) differs from {stored!r} in {ckpt}/config.json, which "
                          f"supplies the model when a checkpoint is loaded; remove {key} from {source} (or convert "
                          f"again)")
    cfg.model, cfg.moe = model, moe


def check_checkpoint(cfg: Config, ckpt: Path, resume: bool) -> None:
    """The checkpoint against its own config.json (checkpoint/verify.py); trainer state and optimizer for a
    resume."""
    from ..checkpoint.store import part_metadata
    from ..checkpoint.verify import verify_checkpoint
    from ..errors import CheckpointError

    verify_checkpoint(ckpt)
    if resume:
        from .checkpointing import OPTIMIZER_DIR, read_trainer_state

        state = read_trainer_state(ckpt)
        if not isinstance(state.get("step"), int) or not isinstance(state.get("data"), dict):
            raise CheckpointError(f"{ckpt}/trainer_state.json: missing 'step' or 'data'")
        if (ckpt / OPTIMIZER_DIR).is_dir():
            part_metadata(ckpt / OPTIMIZER_DIR)


MEMORY_MARGIN = 1.5  # refuse a plan above 1.5x the memory there is: a bomb or a typo, not a tight fit


def check_memory(cfg: Config, world_size: int) -> None:
    """Sizes the config implies, against the machine, before anything is allocated: this rank's share of a
    step's token batch (held whole by the data loader) must fit in half the host's available memory, and the
    memory plan (memory_plan.py: weights, gradients, optimizer state, activations) in MEMORY_MARGIN x the
    device's memory (host RAM on CPU, shared by this node's ranks)."""
    import copy
    import os

    import psutil
    import torch

    from ..memory_plan import GIB, MemoryPlanError, layout_from_config, plan_memory

    dp = cfg.parallel.dp(world_size)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or min(world_size, os.cpu_count() or 1)
    host = psutil.virtual_memory()
    batch_bytes = cfg.train.global_batch_size // dp * (cfg.data.seq_len + 1) * 8 * local
    if batch_bytes > host.available / 2:
        raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} x data.seq_len="
                          f"{cfg.data.seq_len} holds {batch_bytes / GIB:.1f} GiB of token ids on this host per "
                          f"step, more than half of its {host.available / GIB:.1f} GiB available")
    on_gpu = cfg.parallel.backend != "gloo" and torch.cuda.is_available()
    planned = copy.deepcopy(cfg)
    if not on_gpu and planned.train.precision == "auto":
        planned.train.precision = "fp32"  # what auto means on CPU
    try:
        plan = plan_memory(planned, layout_from_config(planned, world_size), overhead_gib=4.0 if on_gpu else 0.0)
    except MemoryPlanError:
        return  # the layout itself was validated above; a planner gap is not the user's error
    if on_gpu:
        have, where = torch.cuda.get_device_properties(0).total_memory, "GPU"
    else:
        have, where = host.total / max(1, local), f"host RAM per rank ({local} ranks on this host)"
    need = plan.total + (0.0 if on_gpu else plan.host)  # on CPU, offloaded optimizer state is the same memory
    if need > MEMORY_MARGIN * have:
        raise ConfigError(f"this config needs about {need / GIB:.1f} GiB per rank (weights "
                          f"{plan.weights / GIB:.1f}, gradients {plan.grads / GIB:.1f}, optimizer "
                          f"{plan.optimizer / GIB:.1f}, activations {plan.activations / GIB:.1f}"
                          + (f", pipeline buffers {plan.pp_buffers / GIB:.1f}" if plan.pp_buffers else "")
                          + "), far more than "
                          f"the {have / GIB:.1f} GiB of {where}; see `megatron-moe plan`")


def check_data(cfg: Config, world_size: int) -> dict:
    """Open every domain as training will (pairs, packing, splits) and check token ids; {domain: samples/epoch}."""
    from ..data import MultiDomainData
    from ..data.indexed import check_vocab
    from ..data.presets import DataError

    if not cfg.data.domains:
        raise DataError("data.domains is empty; configure at least one domain with its dataset prefixes")
    V = cfg.model.vocab_size
    for d in cfg.data.domains:
        check_vocab(d.prefixes, V, f"domain {d.name}:")
    data = MultiDomainData(cfg.data, cfg.train.global_batch_size, 0, cfg.parallel.dp(world_size))
    if cfg.train.eval_interval:
        for dom in data.domains:
            if dom.valid.samples_per_epoch == 0:
                raise DataError(f"domain {dom.name} has no validation samples ({dom.valid.tokens} tokens) but "
                                f"train.eval_interval={cfg.train.eval_interval}; raise data.valid_fraction")
    if cfg.data.tokenizer:
        from ..data import load_tokenizer

        tok = load_tokenizer(cfg.data.tokenizer)
        if tok.vocab_size > V:
            raise DataError(f"data.tokenizer {cfg.data.tokenizer} has {tok.vocab_size} tokens, more than "
                            f"model.vocab_size={V}")
    return dict(data.samples_per_epoch)


def check_run_dir(run_dir: str) -> None:
    from ..atomic import OutputError, probe_writable

    p = Path(run_dir)
    if p.exists() and not p.is_dir():
        raise OutputError(f"logging.run_dir={run_dir} is a file, not a directory")
    try:
        probe_writable(p, p)
    except OutputError as err:
        raise OutputError(f"logging.run_dir={run_dir} cannot be created or written ({err})") from None


def preflight(cfg: Config, world_size: Optional[int] = None) -> PreflightReport:
    """Run checks 1-5 of the module docstring; mutates cfg (model/moe from the checkpoint) and returns a report."""
    from ..checkpoint import resolve
    from ..parallel import detect_launch_env
    from .checkpointing import latest_checkpoint

    from .run_lock import check_free

    world = world_size if world_size is not None else detect_launch_env().world_size
    check_run_dir(cfg.logging.run_dir)
    if cfg.logging.lock_run_dir:
        check_free(cfg.logging.run_dir)
    latest = latest_checkpoint(cfg.logging.run_dir)
    source = latest or (resolve(cfg.checkpoint.load) if cfg.checkpoint.load else None)
    if source is not None:
        apply_checkpoint_model(cfg, source)
    cfg.validate(world)
    check_memory(cfg, world)
    if source is not None:
        check_checkpoint(cfg, Path(source), resume=latest is not None)
    report = PreflightReport(world_size=world, source=str(source) if source else None, resume=latest is not None)
    quiet = logging.getLogger("megatron_moe.data")
    level, quiet.level = quiet.level, logging.WARNING  # the trainer logs the data summary when it opens the data
    try:
        report.domains = check_data(cfg, world)
    finally:
        quiet.setLevel(level)
    log.debug("preflight: %s", json.dumps(report.__dict__))
    return report
