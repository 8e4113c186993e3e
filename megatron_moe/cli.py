"""Shared entry-point behaviour for tools/: logging on rank 0, one-line errors with exit code 2."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from .config import ConfigError
from .errors import UserError


def setup_logging(level: int = logging.INFO) -> None:
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("megatron", "megatron.core", "megatron_fsdp", "torch.distributed.checkpoint"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Callable[[], object]) -> None:
    """Call `main`; turn user errors into `error: <one line>` on stderr and exit code 2."""
    setup_logging()
    try:
        rc = main()
    except (UserError, ConfigError, FileNotFoundError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(rc or 0))
