#!/usr/bin/env python
"""Describe a checkpoint without loading its tensors: config, total and activated parameters, storage and
loadable layouts, construction method and seed, training progress.

    python tools/inspect_checkpoint.py ckpts/moe [--json]
"""
import argparse
import json

from megatron_moe.cli import run


def main() -> None:
    from megatron_moe.analysis.inspect import format_report, inspect_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint or run directory")
    ap.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = ap.parse_args()
    info = inspect_checkpoint(args.checkpoint)
    print(json.dumps(info, indent=1) if args.json else format_report(info))


if __name__ == "__main__":
    run(main)
