"""One training job per run directory: an advisory lock on RUN_DIR/.lock, held by global rank 0.

    with RunLock(run_dir):        # UserError naming the holder when another live job holds it
        ... train ...

The lock is `flock` on RUN_DIR/.lock (the kernel, or the cluster filesystem's lock manager, releases it when the
holding process dies, however it dies), so a lock left by a killed job is taken over safely: there is nothing to
go stale. The file also records the holder (host, pid, start time, command) for the message a second job prints.
Taking the lock also removes what an earlier, dead job left half-written in the run directory (temporary
checkpoint directories and temporary files), which nothing can be writing while we hold it.
Filesystems without flock support are refused with a line that names logging.lock_run_dir=false.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirInUse(UserError):
    """Another job holds the run directory."""


def holder_of(path: Path) -> str:
    """The recorded holder of a lock file, as words."""
    try:
        info = json.loads(path.read_text() or "{}")
        return (f"pid {info['pid']} on {info['host']} (started {info['started']}: "
                f"{' '.join(info.get('argv', []))[:120]})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def stale_temporaries(run_dir: Path) -> list[Path]:
    """What a dead job can leave in a run directory: `.step_N.tmp*` checkpoint directories and `.NAME.tmp-*`
    files from atomic writes (checkpoints/latest, config.yaml)."""
    found = []
    for d in (run_dir, run_dir / "checkpoints"):
        if d.is_dir():
            found += [p for p in d.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    return sorted(found)


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirInUse(f"run directory {self.run_dir} is in use by {holder_of(self.path)} "
                                  f"(lock {self.path}); wait for that job or choose another logging.run_dir") from None
            raise UserError(f"cannot lock run directory {self.run_dir} ({err.strerror}); its filesystem may not "
                            f"support flock: set logging.lock_run_dir=false if no other job uses it") from None
        previous = os.read(fd, 4096)
        if previous:
            log.info("run directory %s was last held by %s, which is gone; taking it over", self.run_dir,
                     holder_of(self.path))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv}).encode())
        os.fsync(fd)
        self._fd = fd
        for tmp in stale_temporaries(self.run_dir):
            log.info("removing %s, left half-written by an earlier job", tmp)
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def check_free(run_dir: str | Path) -> None:
    """Preflight: RunDirInUse if a live job holds `run_dir` (the lock is taken and released at once)."""
    if (Path(run_dir) / LOCK_NAME).is_file():
        import fcntl

        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirInUse(f"run directory {run_dir} is in use by {holder_of(Path(run_dir) / LOCK_NAME)} "
                                  f"(lock {Path(run_dir) / LOCK_NAME}); wait for that job or choose another "
                                  f"logging.run_dir") from None
        finally:
            os.close(fd)
