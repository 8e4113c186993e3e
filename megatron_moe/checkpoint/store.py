"""Single-process checkpoint I/O: a streaming writer (one part at a time) and a full-tensor reader.

    with CheckpointWriter(save_dir, config_dict(model_cfg, moe_cfg)) as w:   # temp dir, renamed on success
        w.add_part("layer_000", {"layers.0.attn.wq.weight": t, ...})
        w.write_json("construction.json", {...})
    for name, tensor in iter_tensors(ckpt_dir): ...
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from ..atomic import StagedWriter
from ..errors import CheckpointError
from .format import CONFIG, INDEX, MODEL_DIR, TOKENIZER_FILES, read_index, resolve
from .safe_dcp import SafeFileSystemReader, read_metadata_file
from .write_stream import flush_and_drop, use_piecewise_writes


def part_of(name: str) -> str:
    """Which part a canonical tensor lives in: embed, layer_NNN or final."""
    if name.startswith("layers."):
        return f"layer_{int(name.split('.')[1]):03d}"
    return "embed" if name.startswith("embed.") else "final"


def dcp_save(tensors: dict, path: Path, no_dist: bool, sync_files: bool = True, threads: int = 1) -> None:
    """Write one DCP part; sync_files=False leaves flushing to the caller (CheckpointWriter's write-behind);
    threads > 1 writes that many files in parallel (serialisation overlaps the writes). Files reach the OS in
    pieces of at most 1 MiB, their records without CRC32 (checkpoint/write_stream.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = dcp.FileSystemWriter(str(path), sync_files=sync_files, thread_count=threads)
        use_piecewise_writes(writer)
        dcp.save(tensors, storage_writer=writer, no_dist=no_dist)


def dcp_failure(err: BaseException) -> str:
    """The underlying cause of a DCP error in one line (DCP wraps per-rank exceptions in CheckpointException,
    whose own message is only `ranks:dict_keys([0])`)."""
    failures = getattr(err, "failures", None)
    if failures:
        exc = next(iter(failures.values()))
        exc = exc[0] if isinstance(exc, tuple) else exc
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {text}"[:240]
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"[:240]


def dcp_load(targets: dict, path: Path, no_dist: bool) -> None:
    """Fill `targets` from the DCP part at `path`; metadata is read by the safe reader (checkpoint/safe_dcp.py).
    Unreadable or mismatched data raise CheckpointError naming the part and the cause."""
    part_metadata(path)  # refuses a crafted or truncated .metadata before DCP touches the part
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(targets, storage_reader=SafeFileSystemReader(str(path)), no_dist=no_dist)
    except CheckpointError:
        raise
    except (CheckpointException, OSError, RuntimeError, ValueError, KeyError, AssertionError,
            pickle.UnpicklingError, EOFError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint part ({dcp_failure(err)})") from None


def part_metadata(path: Path) -> dict:
    """name -> (shape, dtype) as stored in one DCP part (read with the allow-listed unpickler)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint part is missing")
    md = read_metadata_file(path / ".metadata").state_dict_metadata
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.items()}


def copy_tokenizer(src_dir: str | Path, writer) -> list[str]:
    """Copy the tokenizer files `src_dir` holds into `writer` (anything with copy_in); returns their names."""
    copied = []
    for f in TOKENIZER_FILES:
        p = Path(src_dir) / f
        if p.is_file():
            writer.copy_in(p)
            copied.append(f)
    return copied


class CheckpointWriter(StagedWriter):
    """Write a checkpoint part by part into a temporary directory and rename it to `save_dir` when complete
    (megatron_moe.atomic.StagedWriter); on any failure nothing is left behind.

    Write-behind: once a part is written, its files are flushed to disk and dropped from the page cache
    (write_stream.flush_and_drop), so however large the checkpoint, the page cache holds about two parts of it
    and the commit has little left to flush.

    `background=True` (streaming converters): a part is written by a writer thread (DCP's writer then writes the
    part's two files with two threads of its own) while the caller computes the next one, and flushed by a third
    thread while the writer writes the next. At most one part is being written and one flushed (add_part waits for
    the previous write and the flush before it), so memory stays flat. The caller must not modify a tensor after
    handing it to add_part. A failed write or flush is raised by the next add_part or at commit; abort waits for
    both before removing the directory."""

    def __init__(self, save_dir: str | Path, config: dict, overwrite: bool = False, background: bool = False):
        super().__init__(save_dir, overwrite)
        (self.tmp / MODEL_DIR).mkdir()
        self.config, self.parts, self.dtype = config, {}, None
        self._pool = self._flusher = None
        if background:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
            self._flusher = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-flusher")
        self._pending = self._flushing = None  # the last part's write; the flush of the part before

    def add_part(self, part: str, tensors: dict[str, torch.Tensor]) -> None:
        if part in self.parts:
            raise ValueError(f"part {part!r} written twice")
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        path = self.tmp / MODEL_DIR / part
        if self._pool is None:
            dcp_save(tensors, path, True, False, 2)
            flush_and_drop(path)
        else:
            self._wait()
            self._pending = self._pool.submit(self._write, tensors, path)
        self.parts[part] = sorted(tensors)
        self.dtype = self.dtype or str(next(iter(tensors.values())).dtype).replace("torch.", "")

    def _write(self, tensors: dict, path: Path):
        """Writer thread: one part (DCP's own writer, two files in parallel), then its flush handed on."""
        dcp_save(tensors, path, True, False, 2)  # not synced here: the flusher does it
        return self._flusher.submit(flush_and_drop, path)

    def _wait(self) -> None:
        """Wait for the last part's write and for the flush before it (re-raising either's error here)."""
        pending, self._pending = self._pending, None
        flush = pending.result() if pending is not None else None
        previous, self._flushing = self._flushing, flush
        if previous is not None:
            previous.result()

    def finish(self) -> None:
        self._wait()
        self._wait()  # the last part's flush
        for pool in (self._pool, self._flusher):
            if pool is not None:
                pool.shutdown()
        self.write_json(f"{MODEL_DIR}/{INDEX}", {"parts": self.parts, "dtype": self.dtype})
        self.write_json(CONFIG, self.config)

    def abort(self) -> None:
        if self._pool is not None:
            for _ in range(2):  # the write in flight, then the flushes
                try:
                    self._wait()
                except BaseException:  # the write's own error is secondary to the one being handled
                    pass
            self._pool.shutdown()
            self._flusher.shutdown()
        super().abort()


def iter_tensors(path: str | Path, names: Optional[Iterable[str]] = None,
                 dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, full tensor) part by part (only one part in memory at a time)."""
    ckpt = resolve(path)
    index = read_index(ckpt)
    wanted = None if names is None else set(names)
    for part, part_names in index["parts"].items():
        sel = [n for n in part_names if wanted is None or n in wanted]
        if not sel:
            continue
        pdir = ckpt / MODEL_DIR / part
        md = part_metadata(pdir)
        absent = [n for n in sel if n not in md]
        if absent:
            raise CheckpointError(f"{pdir}: part lacks {absent[0]!r}, which model/{INDEX} lists")
        targets = {n: torch.empty(md[n][0], dtype=md[n][1]) for n in sel}
        dcp_load(targets, pdir, no_dist=True)
        for n in sel:
            yield n, targets[n] if dtype is None else targets[n].to(dtype)
    if wanted is not None:
        have = {n for ns in index["parts"].values() for n in ns}
        missing = wanted - have
        if missing:
            raise CheckpointError(f"{ckpt}: checkpoint lacks {sorted(missing)[0]!r} ({len(missing)} missing)")


def read_tensors(path: str | Path, names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
    return dict(iter_tensors(path, names))


class PartReader:
    """Full tensors of one of our checkpoints by canonical name, reading (and keeping) one part at a time: the
    `.get(name)` interface of the format readers (formats/), for streaming over layers."""

    def __init__(self, path: str | Path):
        self.path = resolve(path)
        self.index = read_index(self.path)
        self.part_of = {n: p for p, names in self.index["parts"].items() for n in names}
        self._part: Optional[str] = None
        self._tensors: dict[str, torch.Tensor] = {}

    def names(self) -> list[str]:
        return list(self.part_of)

    def get(self, name: str) -> torch.Tensor:
        part = self.part_of.get(name)
        if part is None:
            raise CheckpointError(f"{self.path}: checkpoint lacks {name!r}")
        if part != self._part:
            self._tensors, self._part = {}, None
            self._tensors = read_tensors(self.path, self.index["parts"][part])
            self._part = part
        return self._tensors[name]

    def release(self) -> None:
        self._tensors, self._part = {}, None
