"""The command line: `megatron-moe COMMAND [flags]` (console script), one flag vocabulary for every command.

    megatron-moe import  --load /models/Llama-3.1-8B --save ckpts/llama3-8b
    megatron-moe convert --load ckpts/llama3-8b --save ckpts/moe --num-experts 8 --top-k 2 --verify
    megatron-moe launch  --nproc-per-node 8 -m megatron_moe.train --config CFG.yaml key.sub=value
    megatron-moe export  --load runs/x --save hf/x --format mixtral

`tools/*.py` are the same commands under their historical script names. Each command lives in its own module
(`megatron_moe.cli.<module>`) with `add_arguments(parser)` and `main(args) -> exit code`, and optionally
`IMPORTS`, the modules `main` needs, which process start-up imports after the arguments parsed (run_command);
common.py holds the shared flags, the one-line error reporting and the exit codes (docs/cli.md).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from typing import Optional, Sequence

from .common import Parser, check_outputs_are_not_inputs, guarded, run, setup_logging  # noqa: F401

# command -> (module under megatron_moe.cli, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "import": ("import_dense", "dense LLaMA-family checkpoint (HF or Meta) -> megatron_moe checkpoint"),
    "import-llama-moe": ("import_llama_moe", "LLaMA-MoE v1 HF checkpoint -> megatron_moe checkpoint"),
    "convert": ("convert", "split a dense model's FFNs into experts (LLaMA-MoE stage 1)"),
    "preprocess": ("preprocess", "tokenize jsonl/txt/parquet/datasets (plain or compressed) into an indexed dataset"),
    "train-tokenizer": ("train_tokenizer", "train a small sentencepiece tokenizer"),
    "train": ("train", "train (one process, or one rank under torchrun/srun)"),
    "launch": ("launch", "torchrun with a preflight check and one-line errors"),
    "evaluate": ("evaluate", "per-domain perplexity, or lm-evaluation-harness tasks"),
    "inspect": ("inspect", "describe a checkpoint without loading tensors"),
    "reshard": ("reshard", "rewrite a checkpoint as saved by a tp x ep layout"),
    "export": ("export", "megatron_moe checkpoint -> HF model directory"),
    "plot": ("plot", "expert-load heatmaps and loss curve"),
    "plan": ("plan", "per-GPU memory estimate and a layout that fits"),
    "check-layout": ("check_layout", "a parallel layout computes the same logits as one process"),
}


def _module(command: str):
    return importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")


def build_parser(command: str, prog: Optional[str] = None) -> Parser:
    mod = _module(command)
    p = Parser(prog=prog or f"megatron-moe {command}", description=(mod.__doc__ or "").strip(),
               formatter_class=_Formatter)
    mod.add_arguments(p)
    return p


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout; show defaults."""


def run_command(command: str, argv: Sequence[str], prog: Optional[str] = None, process: bool = False) -> int:
    """Parse `argv` for `command` and run it; returns the exit code (errors are one line, exit 2; an interrupt
    during start-up or work is one line and 128 + its number, docs/cli.md). Process entry points (`main`,
    `tool`, `python -m megatron_moe.train`) first make SIGTERM/SIGHUP interrupts (signals.py) and pass
    process=True: start-up (the command's module, its argument parsing, and the modules its `main` needs, which
    a command names in `IMPORTS` so that `--help` does not pay for them) then runs with the cyclic garbage
    collector off, and the objects it created are frozen out of the collector (`gc.freeze`). Its full
    collections otherwise walk torch's, DCP's and transformers' ~10^6 module objects again and again: 0.4 s of
    a conversion's start-up, and 13% of its time when they repeated during the work (docs/benchmarks.md)."""
    setup_logging()

    def start() -> int:
        if process:
            gc.disable()
        try:
            mod = _module(command)  # imports torch & co: a Ctrl-C here is handled like one during the work
            if getattr(mod, "RAW_ARGS", False):  # commands that hand their arguments to another parser (launch)
                call = lambda: mod.main(list(argv))  # noqa: E731
            else:
                args = build_parser(command, prog).parse_args(list(argv))
                check_outputs_are_not_inputs(args)
                call = lambda: mod.main(args)  # noqa: E731
            for name in getattr(mod, "IMPORTS", ()):
                importlib.import_module(name)
        finally:
            if process:
                gc.freeze()
                gc.enable()
        return call()

    return guarded(start)


def tool(command: str) -> None:
    """Entry of tools/<script>.py: run `command` with this process's arguments and exit with its code."""
    from ..signals import exit_with, install_terminate_handlers

    install_terminate_handlers()
    exit_with(run_command(command, sys.argv[1:], prog=os.path.basename(sys.argv[0]), process=True))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`megatron-moe COMMAND ...`"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(c) for c in COMMANDS)
        lines = [f"  {c:<{width}}  {d}" for c, (_, d) in COMMANDS.items()]
        print("usage: megatron-moe COMMAND [flags]   (megatron-moe COMMAND --help for its flags)\n\ncommands:\n"
              + "\n".join(lines))
        sys.exit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    from ..signals import exit_with, install_terminate_handlers

    install_terminate_handlers()
    exit_with(run_command(argv[0], argv[1:], process=True))
