"""What every command shares: the flag vocabulary, one-line errors, exit codes, rank-aware output.

Flag vocabulary (docs/cli.md): `--load` input checkpoint/model directory, `--save` output (directory, file or
dataset prefix), `--dtype fp32|bf16|fp16` (float32/bfloat16/float16 accepted), `--json [FILE]` (JSON to FILE, or
to stdout without FILE), `--data [NAME=]PREFIX ...` indexed datasets, `--input FILE ...` raw text,
`--tokenizer`, `--seq-len`, `--batch-size`, `--max-batches`, `--device`, `--overwrite`, `--no-progress`,
`--seed`, and `key.sub=value` config overrides as positional arguments.

Exit codes: 0 success; 1 a check ran and failed (verify, check-layout, plan that does not fit); 2 bad input or
an output that cannot be written (disk full, read-only, permissions), printed as one `error: ...` line;
75 training stopped by a stop signal after saving a checkpoint (rerun to resume); 130 interrupted (Ctrl-C),
143 terminated (SIGTERM), 129 (SIGHUP): temporaries are removed on the way out. Anything else is a bug and prints
a traceback.
Under a distributed launcher only global rank 0 prints the error line; every rank writes it to torchelastic's
error file (TORCHELASTIC_ERROR_FILE) so torchrun's failure summary names it too. Under `megatron-moe launch`
the workers print nothing and the launcher prints the first failed worker's line once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130
LAUNCHED_BY = "MEGATRON_MOE_LAUNCH"  # set by `megatron-moe launch` for its workers


# ------------------------------------------------------------------------------------------- ranks
def launch_rank() -> int:
    """Global rank from the launcher's environment (torchrun RANK, SLURM_PROCID), 0 for a plain process."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (commands also run in-process, e.g. under pytest's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Rank 0 logs INFO to stderr, other ranks only errors; megatron/DCP chatter is kept at WARNING."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level if launch_rank() == 0 else logging.ERROR)
    for noisy in ("megatron", "megatron.core", "megatron_fsdp", "torch.distributed.checkpoint"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------ errors
def one_line(err: BaseException) -> str:
    """The message of a user-facing error as one line."""
    if isinstance(err, OSError) and err.strerror:
        where = err.filename if err.filename is not None else ""
        return f"{where}: {err.strerror}" if where else err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_elastic_error_file(message: str) -> None:
    """torchrun reads this file to print a failed rank's cause in its summary (instead of '<N/A>')."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w") as f:
            json.dump({"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                                     "timestamp": str(int(time.time()))}}}, f)
    except OSError:
        pass


def _close_progress_bars() -> None:
    """Close open tqdm bars, so the error line starts a line of its own instead of following a bar's text."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        try:
            bar.close()
        except (OSError, ValueError):  # a bar that cannot draw (closed stream) must not hide the error line
            pass


def report(message: str) -> None:
    """Print `error: message` once per job (rank 0) and leave it for torchrun's summary on every rank."""
    _write_elastic_error_file(f"error: {message}")
    _close_progress_bars()
    if launch_rank() == 0 and not (os.environ.get(LAUNCHED_BY) and "LOCAL_RANK" in os.environ):
        print(f"error: {message}", file=sys.stderr, flush=True)


def guarded(fn: Callable[[], Optional[int]]) -> int:
    """Call fn; map user errors (UserError and its subclasses, and the OSErrors of files and disks) to one line
    and exit code 2; an interrupt or termination signal (also one that a writer wrapped in its own exception) to
    one line and 128 + the signal number. Other exceptions are bugs and propagate with their traceback."""
    from ..atomic import interrupt_in, user_facing_os_error, write_failure
    from ..signals import exit_code_of, signal_name

    try:
        return int(fn() or 0)
    except UserError as err:
        report(one_line(err))
        return EXIT_USER
    except KeyboardInterrupt as err:
        report(f"interrupted ({signal_name(err)})")
        return exit_code_of(err)
    except OSError as err:
        if not user_facing_os_error(err):
            raise
        report(one_line(err))
        return EXIT_USER
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # DCP's CheckpointException is a BaseException
        wrapped = interrupt_in(err)  # DCP wraps a Ctrl-C during its write in CheckpointException
        if wrapped is not None:
            report(f"interrupted ({signal_name(wrapped)})")
            return exit_code_of(wrapped)
        reason = write_failure(err)  # a writer the call sites did not wrap with atomic.writing
        if reason is None:
            raise
        report(f"a write failed: {reason}")
        return EXIT_USER


def run(fn: Callable[[], Optional[int]]) -> None:
    """Entry-point wrapper: logging on rank 0, SIGTERM/SIGHUP as interrupts, `guarded(fn)`, exit with its code."""
    from ..signals import exit_with, install_terminate_handlers

    setup_logging()
    install_terminate_handlers()
    exit_with(guarded(fn))


# -------------------------------------------------------------------------------------- arguments
class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (`error: ... (see --help)`, exit 2) like every other bad input."""

    def error(self, message: str):  # noqa: D401 - argparse API
        report(f"{self.prog}: {message} (see --help)")
        sys.exit(EXIT_USER)


def dtype_name(text: str) -> str:
    """Canonical dtype name (fp32/bf16/fp16) of a flag value; accepts the torch spellings too (megatron_moe/dtypes.py)."""
    from ..dtypes import DTYPES, canonical_dtype_name

    name = canonical_dtype_name(text)
    if name is None:
        raise argparse.ArgumentTypeError(f"invalid dtype {text!r} (choose from {', '.join(DTYPES)})")
    return name


def torch_dtype(name: Optional[str]):
    """torch dtype of a canonical name; None stays None (keep the stored dtype)."""
    from ..dtypes import to_dtype

    return to_dtype(name)


def add_load(p: argparse.ArgumentParser, what: str, positional_alias: bool = False) -> None:
    p.add_argument("--load", required=not positional_alias, default=None, help=what)
    if positional_alias:
        p.add_argument("load_positional", nargs="?", metavar="LOAD", help="same as --load")


def add_save(p: argparse.ArgumentParser, what: str, *aliases: str, required: bool = True) -> None:
    p.add_argument("--save", *aliases, dest="save", required=required, help=what)


def add_dtype(p: argparse.ArgumentParser, default: Optional[str], what: str) -> None:
    p.add_argument("--dtype", type=dtype_name, default=default, metavar="{fp32,bf16,fp16}", help=what)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the result as JSON to FILE, or to stdout when FILE is omitted")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def resolve_load(args) -> str:
    """--load, or the positional alias some commands accept."""
    load = args.load or getattr(args, "load_positional", None)
    if not load:
        raise UserError("--load is required")
    return load


def default_device(name: Optional[str]) -> str:
    if name:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_json(obj, dest: Optional[str]) -> None:
    """`--json` output: stdout for '-', else FILE written under a temporary name and renamed."""
    text = json.dumps(obj, indent=1)
    if dest in (None, "-"):
        print(text)
        return
    from ..atomic import write_text_atomic

    write_text_atomic(Path(dest), text + "\n")


def positive(name: str, value, allow_zero: bool = False) -> None:
    """One-line check of a numeric flag."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{name}={value} must be {'>= 0' if allow_zero else '> 0'}")


# argparse destinations that name inputs / outputs, across every command's flags (the flag vocabulary)
INPUT_FLAGS = ("load", "load_positional", "input", "data", "tokenizer", "config", "calib_data", "metrics")
OUTPUT_FLAGS = ("save", "json")


def _values(args, names) -> list[str]:
    out = []
    for name in names:
        v = getattr(args, name, None)
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(item, (str, Path)) and str(item) not in ("", "-"):
                text = str(item)
                out.append(text.split("=", 1)[1] if name == "data" and "=" in text else text)  # NAME=PREFIX
    return out


def check_outputs_are_not_inputs(args) -> None:
    """An output never overwrites an input: refuse `--save`/`--json` paths that are, contain or would replace an
    input of the same command (e.g. `inspect CK --json CK/config.json`)."""
    from ..atomic import OutputError, overlaps

    inputs = _values(args, INPUT_FLAGS)
    for flag in OUTPUT_FLAGS:
        for out in _values(args, (flag,)):
            hit = overlaps(out, inputs)
            if hit is not None:
                raise OutputError(f"--{flag} {out} would overwrite the input {hit}; an output never replaces an "
                                  f"input")
