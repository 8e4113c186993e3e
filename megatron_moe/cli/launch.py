"""torchrun with a preflight check and one-line errors (takes exactly torchrun's options).

    megatron-moe launch --nproc-per-node 8 -m megatron_moe.train --config CONFIG.yaml [key.sub=value ...]
    megatron-moe launch --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \
        --rdzv-id JOB --max-restarts 3 -m megatron_moe.train --config CONFIG.yaml

Differences from plain torchrun:
  - When the program is megatron_moe.train, its arguments are validated once, here, before any worker starts
    (training/preflight.py, with the job's world size): a bad config, data prefix, tokenizer or checkpoint is
    one `error:` line and exit code 2, and no worker is started.
  - When the job fails because a worker reported bad input (exit code 2), this prints that worker's one
    `error:` line and exits 2, instead of torchrun's ChildFailedError traceback and exit code 1. Other failures
    (crashes, signals) keep torchrun's full report.
  - TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 is set unless already set: without it, torch 2.13's restarted workers
    fail at gloo set-up after `--max-restarts` restarts a job (docs/launch.md).
"""
from __future__ import annotations

import logging
import os

from .common import EXIT_USER, LAUNCHED_BY, Parser, report

RAW_ARGS = True  # the arguments are torchrun's; its own parser reads them


def _torchrun_parser():
    from torch.distributed import run as torchrun

    parser = torchrun.get_args_parser()
    parser.prog = "megatron-moe launch"
    parser.error = Parser.error.__get__(parser)  # one-line usage errors, exit 2
    return parser


def _preflight(args) -> None:
    """Validate megatron_moe.train's arguments once in the launcher (same checks every rank repeats)."""
    if not (args.module and args.training_script in ("megatron_moe.train", "megatron_moe.cli.train")):
        return
    from torch.distributed.run import determine_local_world_size, parse_min_max_nnodes

    from ..config import load_config
    from ..training.preflight import preflight
    from . import build_parser

    train_args = build_parser("train", prog="megatron_moe.train").parse_args(list(args.training_script_args))
    _, max_nodes = parse_min_max_nnodes(args.nnodes)
    world = max_nodes * determine_local_world_size(args.nproc_per_node)
    preflight(load_config(train_args.config, train_args.overrides), world)


def _failure_message(err) -> tuple[int, str]:
    """(exit code, one-line message) of the first failed worker."""
    _, failure = err.get_first_failure()
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    msg = str(msg or "").strip().splitlines()[0] if msg else ""
    return failure.exitcode, msg.removeprefix("error: ")


def main(argv: list[str]) -> int:
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    os.environ[LAUNCHED_BY] = "1"  # workers leave the error line to us (they still write torchrun's error file)
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = _torchrun_parser().parse_args(argv)
    _preflight(args)
    elastic_log = logging.getLogger("torch.distributed.elastic")
    elastic_log.setLevel(logging.CRITICAL)  # its per-worker failure lines; the summary below says it all
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        code, msg = _failure_message(err)
        if code != EXIT_USER or not msg:
            raise
        report(msg)
        return EXIT_USER
    return 0
