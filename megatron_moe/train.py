"""`python -m megatron_moe.train`: the train command (megatron_moe/cli/train.py), for torchrun's `-m`."""
from __future__ import annotations


def main(argv=None) -> None:
    import sys

    from .cli import run_command
    from .signals import exit_with, install_terminate_handlers

    install_terminate_handlers()
    exit_with(run_command("train", sys.argv[1:] if argv is None else argv, prog="python -m megatron_moe.train",
                          process=True))


if __name__ == "__main__":
    main()
