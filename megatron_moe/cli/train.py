"""Train: one process, or one rank of a torchrun / srun job (SLURM variables are detected).

    megatron-moe train --config CONFIG.yaml [key.sub=value ...]                  # also: python -m megatron_moe.train
    megatron-moe launch --nproc-per-node 8 -m megatron_moe.train --config CONFIG.yaml [key.sub=value ...]
    megatron-moe train --check --world-size 8 --config CONFIG.yaml [...]        # preflight only, no training

Restarting with the same logging.run_dir resumes from RUN_DIR/checkpoints/latest. SIGTERM or SIGUSR1
(train.stop_signals) finish the step, save a checkpoint and exit with 75; a second job on the same run directory
is refused (docs/cli.md, "Signals"). Before any process group,
output directory or model exists, the config, data, tokenizer, checkpoint and run directory are validated
(training/preflight.py); a problem is one `error:` line and exit code 2. On CPU (gloo) the process keeps freed
host memory for reuse instead of faulting it in again every step (train.keep_host_memory, host_memory.py).
"""
from __future__ import annotations

import logging
import sys


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML config (defaults + overrides when omitted)")
    p.add_argument("--check", action="store_true", help="validate config, data and checkpoint, then exit")
    p.add_argument("--world-size", type=int, default=None,
                   help="with --check: the job's world size (default: from the launcher, else 1)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=1e-4 parallel.ep=2")


def main(args) -> int:
    from ..config import load_config
    from ..parallel.state import resolve_backend
    from ..training import run_training
    from ..training.preflight import preflight

    from ..signals import EXIT_STOPPED
    from ..training.run import TrainingStopped
    from .common import launch_rank

    cfg = load_config(args.config, args.overrides)
    if args.check:
        report = preflight(cfg, args.world_size)
        print(report.summary())
        return 0
    if cfg.train.keep_host_memory and resolve_backend(cfg.parallel.backend) == "gloo":  # training on the CPU
        from ..host_memory import keep_freed_host_memory

        logging.getLogger(__name__).info("%s", keep_freed_host_memory())
    try:
        run_training(cfg)
    except TrainingStopped as stopped:
        if launch_rank() == 0:
            where = f"checkpoint {stopped.checkpoint}" if stopped.checkpoint else "nothing trained yet to save"
            print(f"stopped: {stopped.signal_name} at step {stopped.step}; {where}; run the same command again to "
                  f"resume (exit {EXIT_STOPPED})", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    return 0

