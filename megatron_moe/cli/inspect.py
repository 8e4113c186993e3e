"""Describe a checkpoint without loading its tensors: config, total and activated parameters, storage and
loadable layouts, construction method and seed, training progress.

    megatron-moe inspect --load ckpts/moe [--json [FILE]]
"""
from __future__ import annotations

from .common import add_json, add_load, resolve_load, write_json


def add_arguments(p) -> None:
    add_load(p, "checkpoint or run directory", positional_alias=True)
    add_json(p)


def main(args) -> int:
    from ..analysis.inspect import format_report, inspect_checkpoint

    info = inspect_checkpoint(resolve_load(args))
    if args.json:
        write_json(info, args.json)
    else:
        print(format_report(info))
    return 0
