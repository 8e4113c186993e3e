"""Run a megatron-moe command with a pause at a chosen point of a write, so a fault test can signal or kill it
while the write is in progress:

    python tests/security/_hooks.py HOOK MARKER SECONDS COMMAND [ARGS...]

HOOK: `add_part` (after each part our checkpoint writer writes: convert, import), `hf_add` (after each tensor the
HF export writer takes), `train_save` (inside the trainer's checkpoint save, after the model shards are
written), `reshard_rank` (in each rank of `reshard`, before it saves), `preprocess_write` (after each batch of
documents `preprocess` writes), `start_up` (before the command's module
and torch are imported), `none`. At the hook MARKER is created (the test waits for it) and the process sleeps SECONDS.
COMMAND is a `megatron-moe` command name, or `train` for `python -m megatron_moe.train`.
"""
import sys
import time
from pathlib import Path


def _pause(marker: str, seconds: float) -> None:
    Path(marker).touch()
    time.sleep(seconds)


# hook -> (module, attribute holding the function or class, method name or None, pause before the call?)
HOOKS = {
    "add_part": ("megatron_moe.checkpoint.store", "CheckpointWriter", "add_part", False),
    "hf_add": ("megatron_moe.export", "HFWriter", "add", False),
    "train_save": ("megatron_moe.training.checkpointing", "save_optimizer", None, False),
    # in the forked ranks of `reshard` (they inherit the patch)
    "reshard_rank": ("megatron_moe.checkpoint", "save_model", None, True),
    # after each batch of documents preprocess writes (main process)
    "preprocess_write": ("megatron_moe.data.indexed_writer", "IndexedWriter", "add_documents", False),
    # before the command's module (and torch) is imported: the start-up of a command
    "start_up": ("megatron_moe.cli", "_module", None, True),
}


def install(hook: str, marker: str, seconds: float) -> None:
    if hook == "none":
        return
    if hook not in HOOKS:
        raise SystemExit(f"unknown hook {hook}")
    import importlib

    module_name, attr, method, before = HOOKS[hook]
    owner = importlib.import_module(module_name)
    if method is not None:
        owner, attr = getattr(owner, attr), method
    orig = getattr(owner, attr)

    def paused(*args, **kwargs):
        if before:
            _pause(marker, seconds)
        out = orig(*args, **kwargs)
        if not before:
            _pause(marker, seconds)
        return out

    setattr(owner, attr, paused)


if __name__ == "__main__":
    hook, marker, seconds, command, *args = sys.argv[1:]
    from megatron_moe.signals import exit_with, install_terminate_handlers

    install_terminate_handlers()
    install(hook, marker, float(seconds))
    from megatron_moe.cli import run_command

    exit_with(run_command(command, args, prog=command))
