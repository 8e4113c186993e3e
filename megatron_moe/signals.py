"""Signals, as clusters and users send them (docs/cli.md, "Signals").

Every command: SIGTERM (`kill`, `scancel`, `docker stop`, preemption) and SIGHUP raise `Terminated` in the main
thread, a KeyboardInterrupt, so the same cleanup runs as for Ctrl-C: writers remove their temporaries, worker
pools shut down, and the command exits with 143 (SIGTERM) / 129 (SIGHUP) / 130 (Ctrl-C) and one line.

Training: `stop_requests(signals)` makes the configured signals (train.stop_signals, default SIGTERM and SIGUSR1,
which slurm's `--signal=USR1@SECONDS` sends ahead of the time limit) only *request* a stop. The trainer finishes
the step it is in, all ranks agree (one all-reduce per step), it saves a checkpoint and exits with EXIT_STOPPED
(75, "rerun to resume"). A second stop signal while it is finishing raises `Terminated` at once.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterable, Iterator, Optional

log = logging.getLogger(__name__)

EXIT_STOPPED = 75  # sysexits EX_TEMPFAIL: stopped on request after saving; run the same command again to resume


class Terminated(KeyboardInterrupt):
    """A termination signal arrived (raised in the main thread, like KeyboardInterrupt for SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(err: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP."""
    return err.exit_code if isinstance(err, Terminated) else 128 + signal.SIGINT


def signal_name(err: KeyboardInterrupt) -> str:
    """SIGINT for Ctrl-C, the signal's name for Terminated."""
    return signal.Signals(err.signum).name if isinstance(err, Terminated) else "SIGINT"


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def _quiet_thread_failures(args) -> None:
    """threading.excepthook: a writer thread (DCP's file writers) failing on a full disk or an interrupt is
    reported once, by the main thread that joins it (atomic.writing); anything else is printed as usual."""
    from .atomic import write_failure

    if isinstance(args.exc_value, KeyboardInterrupt) or (args.exc_value is not None
                                                         and write_failure(args.exc_value) is not None):
        return
    _default_thread_hook(args)


_default_thread_hook = threading.excepthook


def install_terminate_handlers() -> None:
    """SIGTERM / SIGHUP raise Terminated in the main thread (no-op outside it); writer threads that fail on the
    disk stay quiet (the command's one line reports it)."""
    threading.excepthook = _quiet_thread_failures
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


def exit_with(code: int) -> None:
    """Exit with `code`, decided: a signal that arrives during interpreter shutdown (atexit handlers, thread
    joins) ends the process at once with that same code instead of turning it into a traceback or a death by
    the signal (Python re-raises an unhandled Ctrl-C as SIGINT)."""
    if threading.current_thread() is threading.main_thread():
        def _leave(signum, frame):
            sys.stderr.flush()
            os._exit(code)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _leave)
    sys.exit(code)


def parse_signal(name: str) -> signal.Signals:
    """`SIGTERM`, `TERM`, `usr1` or `15` -> signal.Signals; ValueError for anything else."""
    text = str(name).strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text not in signal.Signals.__members__:
        raise ValueError(f"unknown signal {name!r}")
    return signal.Signals[text]


class StopRequest:
    """Set by a stop signal; read by the trainer at step boundaries."""

    def __init__(self):
        self.signum: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handler(self, signum, _frame):
        if self.signum is not None:  # a second one: stop now (the save in progress is abandoned and cleaned up)
            raise Terminated(signum)
        self.signum = signum
        if os.environ.get("RANK", "0") in ("0", ""):
            log.warning("%s received: finishing this step, then saving a checkpoint and exiting (send it again to "
                        "stop at once)", signal.Signals(signum).name)


@contextlib.contextmanager
def stop_requests(signals: Iterable[str]) -> Iterator[StopRequest]:
    """Within the block, `signals` set the yielded StopRequest instead of terminating; restored afterwards."""
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return
    previous = {}
    try:
        for name in signals:
            sig = parse_signal(name)
            previous[sig] = signal.signal(sig, req._handler)
        yield req
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM/SIGHUP back while starting worker processes: a child forked in the window inherits the
    block and calls `worker_ignores_interrupts()`; the parent gets any held signal when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def worker_ignores_interrupts() -> None:
    """In a worker process: the parent alone handles Ctrl-C (and stops the workers); SIGTERM/SIGHUP end the worker
    at once with the default action (it holds no output of its own). Unblocks what signals_deferred blocked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINATING)
