"""torchrun with a preflight check and one-line errors (takes exactly torchrun's options).

    megatron-moe launch --nproc-per-node 8 -m megatron_moe.train --config CONFIG.yaml [key.sub=value ...]
    megatron-moe launch --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \
        --rdzv-id JOB --max-restarts 3 -m megatron_moe.train --config CONFIG.yaml

Differences from plain torchrun:
  - When the program is megatron_moe.train, its arguments are validated once, here, before any worker starts
    (training/preflight.py, with the job's world size): a bad config, data prefix, tokenizer or checkpoint is
    one `error:` line and exit code 2, and no worker is started.
  - When the job fails because a worker reported bad input (exit code 2), this prints that worker's one
    `error:` line and exits 2, instead of torchrun's ChildFailedError traceback and exit code 1. When every
    worker stopped gracefully on a stop signal (exit 75: checkpoint saved), this says so and exits 75. Other
    failures (crashes, signals) keep torchrun's full report.
  - TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 is set unless already set: without it, torch 2.13's restarted workers
    fail at gloo set-up after `--max-restarts` restarts a job (docs/launch.md).
  - SIGTERM and SIGUSR1 (slurm's `--signal`) are forwarded to the workers, which finish their step, save a
    checkpoint and exit; torchrun waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default here 900 s, torchrun's own 30 s)
    before killing them. The launcher then exits 75 naming the checkpoint saved after the signal.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from .common import EXIT_USER, LAUNCHED_BY, Parser, report

RAW_ARGS = True  # the arguments are torchrun's; its own parser reads them


def _torchrun_parser():
    from torch.distributed import run as torchrun

    parser = torchrun.get_args_parser()
    parser.prog = "megatron-moe launch"
    parser.error = Parser.error.__get__(parser)  # one-line usage errors, exit 2
    return parser


def _preflight(args):
    """Validate megatron_moe.train's arguments once in the launcher (same checks every rank repeats); returns
    the training config (None for other programs)."""
    if not (args.module and args.training_script in ("megatron_moe.train", "megatron_moe.cli.train")):
        return None
    from torch.distributed.run import determine_local_world_size, parse_min_max_nnodes

    from ..config import load_config
    from ..training.preflight import preflight
    from . import build_parser

    train_args = build_parser("train", prog="megatron_moe.train").parse_args(list(args.training_script_args))
    _, max_nodes = parse_min_max_nnodes(args.nnodes)
    world = max_nodes * determine_local_world_size(args.nproc_per_node)
    cfg = load_config(train_args.config, train_args.overrides)
    preflight(cfg, world)
    return cfg


def _stopped_by_signal(cfg, sig: int, since: float) -> int:
    """torchrun got a stop signal and forwarded it to the workers, which save and exit: say what was saved."""
    import signal as _signal
    from pathlib import Path

    from ..signals import EXIT_STOPPED

    name = _signal.Signals(sig).name
    latest = Path(cfg.logging.run_dir) / "checkpoints" / "latest" if cfg is not None else None
    saved = None
    if latest is not None and latest.is_file():
        ckpt = latest.parent / latest.read_text().strip()
        if (ckpt / "trainer_state.json").is_file() and (ckpt / "trainer_state.json").stat().st_mtime >= since:
            saved = ckpt
    if saved is not None:
        print(f"stopped: {name} was forwarded to the workers, which saved {saved}; run the same command again to "
              f"resume (exit {EXIT_STOPPED})", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    report(f"interrupted ({name}); the workers saved no checkpoint after it (one of them may have been killed "
           f"after TORCH_ELASTIC_SHUTDOWN_TIMEOUT={os.environ.get('TORCH_ELASTIC_SHUTDOWN_TIMEOUT')} s)")
    return 128 + sig


def _failure_message(err) -> tuple[int, str]:
    """(exit code, one-line message) of the first failed worker."""
    _, failure = err.get_first_failure()
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    msg = str(msg or "").strip().splitlines()[0] if msg else ""
    return failure.exitcode, msg.removeprefix("error: ")


def main(argv: list[str]) -> int:
    import time

    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    os.environ[LAUNCHED_BY] = "1"  # workers leave the error line to us (they still write torchrun's error file)
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing import api as elastic_mp
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    signalled_at = []
    torch_handler = elastic_mp._terminate_process_handler

    def note_signal(signum, frame):  # when the stop signal came, to tell a save after it from an earlier one
        signalled_at.append(time.time())
        torch_handler(signum, frame)

    elastic_mp._terminate_process_handler = note_signal

    args = _torchrun_parser().parse_args(argv)
    # torchrun forwards these to the workers (train.stop_signals: finish the step, save, exit 75) and waits this
    # long for them before SIGKILL; its own defaults leave SIGUSR1 (slurm's --signal) to kill torchrun alone,
    # and 30 s is too short to save a large model. Explicit --signals-to-handle / --shutdown-timeout win.
    if args.signals_to_handle == "SIGTERM,SIGINT,SIGHUP,SIGQUIT" and "PET_SIGNALS_TO_HANDLE" not in os.environ:
        args.signals_to_handle += ",SIGUSR1"
    if args.shutdown_timeout is None:
        args.shutdown_timeout = int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "900"))
    os.environ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(args.shutdown_timeout)
    cfg = _preflight(args)
    elastic_log = logging.getLogger("torch.distributed.elastic")
    elastic_log.setLevel(logging.CRITICAL)  # its per-worker failure lines; the summary below says it all
    try:
        torchrun.run(args)
    except SignalException as err:
        if err.sigval in (signal.SIGINT,):
            raise KeyboardInterrupt from None
        return _stopped_by_signal(cfg, int(err.sigval), signalled_at[0] if signalled_at else time.time())
    except ChildFailedError as err:
        from ..signals import EXIT_STOPPED

        code, msg = _failure_message(err)
        if code == EXIT_STOPPED and all(f.exitcode == EXIT_STOPPED for f in err.failures.values()):
            print(f"stopped: the workers saved a checkpoint after a stop signal; run the same command again to "
                  f"resume (exit {EXIT_STOPPED})", file=sys.stderr, flush=True)
            return EXIT_STOPPED
        if code != EXIT_USER or not msg:
            raise
        report(msg)
        return EXIT_USER
    return 0
