"""Atomic outputs: the one primitive under every writer (checkpoints, HF exports, datasets, plots, reshards).

    check_output(path)                      # before any work: refuse an existing output or an unwritable place
    with AtomicDir(save_dir) as tmp:        # `.NAME.tmp-PID` next to save_dir
        ... write files under tmp ...
    # on success: every file fsynced, then one rename to save_dir; on any failure (also at commit): tmp removed
    write_text_atomic(path, text)           # one small file: temp name, fsync, rename
    with writing(path): ...                 # a third-party writer's failure -> OutputError naming `path`

A reader never sees a half-written output under its final name: it is absent or complete.
Temporary names are `.NAME.tmp-HOST-PID`: a later writer of NAME on the same host removes those whose process is
gone (a job killed with SIGKILL, or a node that lost power, cleans up nothing itself).
Failures inside writers that are not ours (DCP's CheckpointException, safetensors' SafetensorError, torch.save's
RuntimeError, a bare OSError) are mapped back to one line: a full disk, a file-size limit, a read-only or
forbidden place become OutputError ("cannot write PATH: No space left on device"); a Ctrl-C or SIGTERM that such a
writer wrapped is raised again as the interrupt it was.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator, Optional

from .errors import UserError


class OutputError(UserError):
    """An output path that cannot be written (exists, under a file, in an unwritable directory, disk full)."""


# ------------------------------------------------------------------------------------ writer failures
# errnos that mean "this place cannot take the output", not "the program is wrong"
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
# errnos of OSErrors that are bad input or environment when they reach the command line (others are bugs)
USER_ERRNOS = WRITE_ERRNOS | {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG,
                              errno.ENOTEMPTY, errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.EXDEV}
_OS_CODE = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")  # Rust's io::Error, as safetensors words it


def _causes(err: BaseException, depth: int = 0) -> Iterator[BaseException]:
    """err, what it wraps (DCP's per-rank failures), its cause and context, recursively."""
    if err is None or depth > 8:
        return
    yield err
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict):
        for f in failures.values():
            yield from _causes(f[0] if isinstance(f, tuple) else f, depth + 1)
    yield from _causes(err.__cause__, depth + 1)
    if not err.__suppress_context__:
        yield from _causes(err.__context__, depth + 1)


def interrupt_in(err: BaseException) -> Optional[KeyboardInterrupt]:
    """The Ctrl-C / termination signal a writer wrapped in its own exception, if any."""
    return next((e for e in _causes(err) if isinstance(e, KeyboardInterrupt)), None)


def user_facing_os_error(err: OSError) -> bool:
    return err.errno in USER_ERRNOS or (err.errno is None and err.strerror is None)


def write_failure(err: BaseException) -> Optional[str]:
    """Why a write failed, in words, when the cause is the place written to (disk full, size limit, read-only,
    permissions, I/O error); None for anything else (a bug keeps its traceback)."""
    for e in _causes(err):
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e.strerror or os.strerror(e.errno)
        text = str(e)
        m = _OS_CODE.search(text)  # safetensors: "I/O error: File too large (os error 27)" (0.8), "Os { code: 27"
        code = int(m.group(1) or m.group(2)) if m else None
        if code in WRITE_ERRNOS:
            return os.strerror(code)
        if isinstance(e, RuntimeError) and "file write failed" in text:  # torch.save's zip writer
            return "write failed (disk full or file size limit?)"
    return None


@contextlib.contextmanager
def writing(path: str | Path):
    """Map a writer's failure while producing `path` back to the contract: OutputError for the place, the
    original interrupt for a wrapped Ctrl-C/SIGTERM; anything else propagates unchanged."""
    try:
        yield
    except (KeyboardInterrupt, UserError):
        raise
    except BaseException as err:  # CheckpointException is a BaseException
        if isinstance(err, (SystemExit, GeneratorExit)):
            raise
        wrapped = interrupt_in(err)
        if wrapped is not None:
            raise wrapped from None
        reason = write_failure(err)
        if reason is not None:
            raise OutputError(f"cannot write {path}: {reason}") from None
        raise


# ----------------------------------------------------------------------------------- temporary names
_HOST = socket.gethostname().replace("/", "_")


def temp_path(final: Path, kind: str = "tmp") -> Path:
    """`.NAME.tmp-HOST-PID` next to `final` (kind: tmp, old)."""
    return final.parent / f".{final.name}.{kind}-{_HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(final: Path) -> list[Path]:
    """Temporaries of `final` left by dead processes of this host (also the older `.NAME.tmp-PID` form)."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    prefix = f".{final.name}."
    out = []
    for p in final.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        rest = p.name[len(prefix):]
        m = re.fullmatch(r"(?:tmp|old)-(?:(.+)-)?(\d+)", rest)
        if not m:
            continue
        host, pid = m.group(1), int(m.group(2))
        if (host is None or host == _HOST) and pid != os.getpid() and not _pid_alive(pid):
            out.append(p)
    return sorted(out)


def remove_stale_temps(final: Path) -> list[Path]:
    """Remove what dead writers of `final` left behind; returns what was removed."""
    import logging

    removed = stale_temps(final)
    for p in removed:
        logging.getLogger(__name__).info("removing %s, left by a writer that is gone", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


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


def overlaps(output: str | Path, inputs) -> Optional[Path]:
    """The first input that `output` would overwrite or replace: the same path, a path inside the output
    directory, or (for an output inside an input directory) the input directory itself. Inputs may be dataset
    prefixes (PREFIX.bin/.idx count)."""
    out = Path(output).resolve()
    for raw in inputs:
        if raw in (None, "", "-"):
            continue
        for cand in (Path(raw), Path(f"{raw}.bin"), Path(f"{raw}.idx")):
            if not cand.exists():
                continue
            inp = cand.resolve()
            if out == inp or inp.is_relative_to(out) or (inp.is_dir() and out.is_relative_to(inp)):
                return Path(raw)
    return None


def check_output(path: str | Path, overwrite: bool = False, flag: str = "--save", inputs=()) -> Path:
    """Validate an output path before any work: it must not exist (unless `overwrite`), must not be or contain
    one of `inputs`, and its parent must be a writable directory or creatable under one. Returns the path;
    raises OutputError with one line."""
    p = Path(path)
    hit = overlaps(p, inputs)
    if hit is not None:
        raise OutputError(f"{flag} {p} would overwrite the input {hit}; an output never replaces an input")
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
    with atomic_file(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: Optional[str] = None):
    """One file streamed under its temporary name and renamed when the block ends without error (flushed and
    fsynced first); on any failure, also of close(), the temporary is removed and a writer failure is one line."""
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        with writing(path):
            with open(tmp, mode, encoding=encoding or (None if "b" in mode else "utf-8")) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; removed on every failure
    fsync_dir(path.parent)


class AtomicDir:
    """A directory written under `.NAME.tmp-PID` and renamed to NAME by `commit()` (or on a clean `with` exit).

    `overwrite=True` replaces an existing NAME at commit (after the new one is complete). Any exception inside
    the `with` block, or during commit, removes the temporary directory."""

    def __init__(self, final: str | Path, overwrite: bool = False, flag: str = "--save", inputs=()):
        self.final = check_output(final, overwrite, flag, inputs)
        self.overwrite = overwrite
        remove_stale_temps(self.final)
        self.tmp = temp_path(self.final)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        with writing(self.final):
            self.tmp.mkdir(parents=True)
        self.committed: Optional[Path] = None

    def commit(self) -> Path:
        with writing(self.final):
            fsync_tree(self.tmp)
            if self.final.exists() and self.overwrite:
                old = temp_path(self.final, "old")
                os.replace(self.final, old)
                os.replace(self.tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
            elif self.final.exists():  # another process produced it while we were writing
                raise OutputError(f"{self.final} appeared while this command was writing it (another process?); "
                                  f"nothing was replaced")
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
        return _finish(self, exc)


class AtomicFiles:
    """Several files that only make sense together (a dataset's .bin and .idx), each written under its own
    `.NAME.tmp-HOST-PID` and renamed in the given order at commit: put the file whose presence marks the set
    complete last. With `overwrite`, the last (marking) file is removed before the others are replaced, so a
    reader never sees new data next to an old marker. Any failure removes every temporary."""

    def __init__(self, finals, overwrite: bool = False, flag: str = "--save", inputs=()):
        self.finals = [Path(f) for f in finals]
        for f in self.finals:
            check_output(f, overwrite, flag, inputs)
        self.final = self.finals[-1]
        self.overwrite = overwrite
        for f in self.finals:
            remove_stale_temps(f)
        with writing(self.final):
            self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmps = [temp_path(f) for f in self.finals]

    def commit(self) -> list[Path]:
        with writing(self.final):
            for t in self.tmps:
                fsync_file(t)
            if self.overwrite and self.final.exists():
                os.remove(self.final)  # the old set stops being complete first
            for t, f in zip(self.tmps, self.finals, strict=True):
                os.replace(t, f)
        fsync_dir(self.final.parent)
        return self.finals

    def abort(self) -> None:
        for t in self.tmps:
            t.unlink(missing_ok=True)

    def __enter__(self) -> list[Path]:
        return self.tmps

    def __exit__(self, exc_type, exc, tb) -> bool:
        return _finish(self, exc)


def _finish(writer, exc: Optional[BaseException]) -> bool:
    """`with` exit of AtomicDir / StagedWriter: commit on success; on any failure remove the temporary, and map a
    third-party writer's failure to one line (`writing`)."""
    if exc is None:
        try:
            writer.commit()  # commit maps its own failures
        except BaseException:
            writer.abort()  # e.g. disk full at the final flush: leave no temporary directory behind
            raise
        return False
    writer.abort()
    if not isinstance(exc, (KeyboardInterrupt, UserError, SystemExit, GeneratorExit)):
        with writing(writer.final):
            raise exc
    return False


class StagedWriter:
    """Base of the writers that stage a directory in an AtomicDir (checkpoint.store.CheckpointWriter, the HF
    export's HFWriter): `with Writer(...) as w: ...` commits on success and removes everything on any failure,
    also a failure during the commit. Subclasses write their index files in `finish()`."""

    json_indent = 1

    def __init__(self, final: str | Path, overwrite: bool = False, inputs=()):
        self._dir = AtomicDir(final, overwrite, inputs=inputs)
        self.final, self.tmp = self._dir.final, self._dir.tmp

    def finish(self) -> None:
        """Write what the directory needs besides the added content (indexes, config)."""

    def write_json(self, filename: str, obj) -> None:
        import json

        (self.tmp / filename).write_text(json.dumps(obj, indent=self.json_indent) + "\n")

    def copy_in(self, src: str | Path, name: Optional[str] = None) -> None:
        shutil.copy2(src, self.tmp / (name or Path(src).name))

    def commit(self) -> Path:
        with writing(self.final):
            self.finish()
        return self._dir.commit()

    def abort(self) -> None:
        self._dir.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return _finish(self, exc)
