"""A stand-in training process for the SIGTERM check of `make docker-test` (docker/test_image.sh).

    python -m torch.distributed.run --standalone --nproc-per-node 2 docker/sigterm_probe.py DIR

Each rank writes DIR/ready.<rank> (naming the container's PID 1), then waits. On SIGTERM it writes
DIR/sigterm.<rank> and exits 0. After `docker stop`, both sigterm files exist only if the signal went from the
engine to PID 1 (tini), from there to torchrun, and from torchrun to every worker.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")

    def on_signal(signum, _frame):
        (out / f"sigterm.{rank}").write_text(f"{signal.Signals(signum).name} pid {os.getpid()}\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    (out / f"ready.{rank}").write_text(f"pid1 {Path('/proc/1/comm').read_text().strip()}\n")
    while True:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
