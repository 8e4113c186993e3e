"""Atomic outputs: the one primitive under every writer (checkpoints, HF exports, datasets, plots, reshards).

    check_output(path)                      # before any work: refuse an existing output or an unwritable place
    with AtomicDir(save_dir) as tmp:        # `.NAME.tmp-PID` next to save_dir
        ... write files under tmp ...
    # on success: every file fsynced, then one rename to save_dir; on any failure (also at commit): tmp removed
    write_text_atomic(path, text)           # one small file: temp name, fsync, rename

A reader never sees a half-written output under its final name: it is absent or complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from .errors import UserError


class OutputError(UserError):
    """An output path that cannot be written (exists, under a file, in an unwritable directory)."""


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file under `path`, then the directories, to disk."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def probe_writable(directory: Path, target: Path) -> None:
    """OutputError unless files can be created in `directory` (or, if it does not exist yet, in its nearest
    existing ancestor, where it would be created). Tries it: permission bits lie to root and on /proc."""
    import tempfile

    probe = Path(directory)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write {target}: {probe} is a file, not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe)
    except OSError as err:
        raise OutputError(f"cannot write {target}: {probe} is not writable ({err.strerror})") from None
    os.close(fd)
    os.unlink(name)


def check_output(path: str | Path, overwrite: bool = False, flag: str = "--save") -> Path:
    """Validate an output path before any work: it must not exist (unless `overwrite`), and its parent must be a
    writable directory or creatable under one. Returns the path; raises OutputError with one line."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(f"{p} already exists; choose another {flag} or remove it")
    if p.exists() and overwrite and not (p.is_dir() or p.is_file()):
        raise OutputError(f"{p} exists and is not a file or directory")
    probe_writable(p.parent if str(p.parent) else Path("."), p)
    return p


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write one small file completely or not at all (temp name in the same directory, fsync, rename)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """`write_text_atomic` for bytes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class AtomicDir:
    """A directory written under `.NAME.tmp-PID` and renamed to NAME by `commit()` (or on a clean `with` exit).

    `overwrite=True` replaces an existing NAME at commit (after the new one is complete). Any exception inside
    the `with` block, or during commit, removes the temporary directory."""

    def __init__(self, final: str | Path, overwrite: bool = False, flag: str = "--save"):
        self.final = check_output(final, overwrite, flag)
        self.overwrite = overwrite
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.committed: Optional[Path] = None

    def commit(self) -> Path:
        fsync_tree(self.tmp)
        if self.final.exists() and self.overwrite:
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        self.committed = self.final
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
            return False
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise
        return False


class StagedWriter:
    """Base of the writers that stage a directory in an AtomicDir (checkpoint.store.CheckpointWriter, the HF
    export's HFWriter): `with Writer(...) as w: ...` commits on success and removes everything on any failure,
    also a failure during the commit. Subclasses write their index files in `finish()`."""

    json_indent = 1

    def __init__(self, final: str | Path, overwrite: bool = False):
        self._dir = AtomicDir(final, overwrite)
        self.final, self.tmp = self._dir.final, self._dir.tmp

    def finish(self) -> None:
        """Write what the directory needs besides the added content (indexes, config)."""

    def write_json(self, filename: str, obj) -> None:
        import json

        (self.tmp / filename).write_text(json.dumps(obj, indent=self.json_indent) + "\n")

    def copy_in(self, src: str | Path, name: Optional[str] = None) -> None:
        shutil.copy2(src, self.tmp / (name or Path(src).name))

    def commit(self) -> Path:
        self.finish()
        return self._dir.commit()

    def abort(self) -> None:
        self._dir.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:  # e.g. disk full at the final flush: leave no temporary directory behind
                self.abort()
                raise
        else:
            self.abort()
        return False
