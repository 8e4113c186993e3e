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


def install(hook: str, marker: str, seconds: float) -> None:
    if hook == "add_part":
        from megatron_moe.checkpoint.store import CheckpointWriter

        orig = CheckpointWriter.add_part

        def add_part(self, part, tensors):
            orig(self, part, tensors)
            _pause(marker, seconds)

        CheckpointWriter.add_part = add_part
    elif hook == "hf_add":
        from megatron_moe.export import HFWriter

        orig_add = HFWriter.add

        def add(self, name, tensor):
            orig_add(self, name, tensor)
            _pause(marker, seconds)

        HFWriter.add = add
    elif hook == "train_save":
        from megatron_moe.training import checkpointing

        orig_opt = checkpointing.save_optimizer

        def save_optimizer(*args, **kwargs):
            orig_opt(*args, **kwargs)
            _pause(marker, seconds)

        checkpointing.save_optimizer = save_optimizer
    elif hook == "reshard_rank":  # in the forked ranks of `reshard` (they inherit the patch)
        import megatron_moe.checkpoint as ck

        orig_save = ck.save_model

        def save_model(model, path, *a, **k):
            _pause(marker, seconds)
            return orig_save(model, path, *a, **k)

        ck.save_model = save_model
    elif hook == "preprocess_write":  # after each batch of documents preprocess writes (main process)
        from megatron_moe.data.indexed_writer import IndexedWriter

        orig_docs = IndexedWriter.add_documents

        def add_documents(self, data, lengths):
            orig_docs(self, data, lengths)
            _pause(marker, seconds)

        IndexedWriter.add_documents = add_documents
    elif hook == "start_up":  # before the command's module (and torch) is imported: the start-up of a command
        import megatron_moe.cli as cli

        orig_module = cli._module

        def _module(command):
            _pause(marker, seconds)
            return orig_module(command)

        cli._module = _module
    elif hook != "none":
        raise SystemExit(f"unknown hook {hook}")


if __name__ == "__main__":
    hook, marker, seconds, command, *args = sys.argv[1:]
    from megatron_moe.signals import exit_with, install_terminate_handlers

    install_terminate_handlers()
    install(hook, marker, float(seconds))
    from megatron_moe.cli import run_command

    exit_with(run_command(command, args, prog=command))
