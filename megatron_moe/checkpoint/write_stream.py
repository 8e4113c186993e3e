"""How checkpoint files reach the OS and the disk: in pieces of at most 1 MiB, without CRC32s nobody checks, and
(streaming writers) flushed and dropped from the page cache part by part.

torch.distributed.checkpoint hands each tensor's bytes to one `write()` call (`torch.save` of a 90 MB expert
weight is one 90 MB write). Linux (6.x, ext4 and others with large folios) sizes the page-cache folios it
allocates for a write by the write's length, so huge writes fill the page cache with 2 MiB folios; on the VM
we measured (kernel 6.18) that path copied at a fifth of the speed of writes of 1 MiB or less (same bytes, same files:
docs/benchmarks.md, "Writing checkpoint files"). Cutting each write into 1 MiB pieces costs one system call
per MiB anywhere else.

`records_without_crc()`: DCP stores each tensor as a `torch.save` zip record, and `torch.save` computes a CRC32 of
every byte for the record's central directory entry; `torch.load` (so DCP's reader) never checks it (a flipped
byte in a record loads silently: tests/foundation/test_checkpoint_writes.py), and a `.distcp` file, many zip
archives end to end, is no zip file another tool could test. So each file of our parts is written with torch's own
switch off (`torch.utils.serialization.config`'s `save.compute_crc32`, whose files torch.load is documented to
load), set inside the DCP writer thread that writes it (the switch is a thread-local override); the CRC fields are
0 and the serialization id torch derives from them differs, and the CRC's pass over every byte (2 s of CPU in a
16-layer 7B conversion) is saved. A torch without a thread-local switch keeps the CRCs. Otherwise the bytes on disk
are exactly DCP's.

`flush_and_drop(part_dir)` is the write-behind of the streaming checkpoint writer (store.CheckpointWriter): a
written part's files are flushed to disk (fdatasync) and their pages dropped from the page cache
(posix_fadvise DONTNEED) while the next part is written. The output of a conversion (13 GB for a 7B model, 140 GB
for a 70B one) then neither fills the page cache, which a container's memory limit counts, nor leaves gigabytes
to flush at the commit; and the next part's writes reuse the pages just dropped instead of growing the page cache
into memory the VM's host may have to fault in again (conversions 1.5x faster on the VM of docs/benchmarks.md).
"""
from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.distributed.checkpoint.filesystem import FileSystem

WRITE_PIECE = 1 << 20
"""Largest single write() a checkpoint file gets: 1 MiB (2 MiB writes were already 1.7x slower than 1 MiB on
the VM of docs/benchmarks.md; 256 KiB was no faster than 1 MiB)."""


def _thread_local_crc_switch() -> bool:
    """Whether this torch has the CRC switch as a thread-local override (torch.utils.serialization.config; 2.13
    documents overrides as thread-local). Without it (older torch) records keep their CRCs: a process-wide switch
    flipped by concurrent writer threads could be left off for the user's own torch.save."""
    try:
        from torch.utils.serialization import config
    except ImportError:
        return False
    seen = []
    try:
        with config.patch({"save.compute_crc32": False}):
            probe = threading.Thread(target=lambda: seen.append(torch.serialization.get_crc32_options()))
            probe.start()
            probe.join()
            seen.append(torch.serialization.get_crc32_options())
    except (AttributeError, KeyError, TypeError):
        return False
    return seen == [True, False]


_CRC_SWITCH = None


@contextmanager
def records_without_crc():
    """torch.save in this thread writes no CRC32 inside the block (where torch's switch is thread-local)."""
    global _CRC_SWITCH
    if _CRC_SWITCH is None:
        _CRC_SWITCH = _thread_local_crc_switch()
    if not _CRC_SWITCH:
        yield
        return
    from torch.utils.serialization import config

    with config.patch({"save.compute_crc32": False}):
        yield


class PieceWiseFileIO(io.FileIO):
    """A file whose write() passes its bytes to the OS at most WRITE_PIECE at a time (and always all of them)."""

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done, fd = 0, self.fileno()
        while done < len(view):
            done += os.write(fd, view[done:done + WRITE_PIECE])
        return done


class PieceWiseFileSystem(FileSystem):
    """DCP's local file system, writing files through PieceWiseFileIO, their records without CRC32 (reads are
    unchanged)."""

    @contextmanager
    def create_stream(self, path, mode: str):
        if "w" not in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with io.BufferedWriter(PieceWiseFileIO(os.fspath(path), mode.replace("b", "")),
                               buffer_size=WRITE_PIECE) as stream, records_without_crc():
            yield stream  # DCP's writer thread torch.saves the file's records into it


def flush_and_drop(directory: str | Path) -> None:
    """Flush every file in `directory` to disk and advise the OS to drop its cached pages. A flush failure (a full
    disk found at write-back, an I/O error) is raised; the advice is only advice (an OS or file system without it
    keeps the pages cached)."""
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
    for f in sorted(Path(directory).iterdir()):
        if not f.is_file():
            continue
        fd = os.open(f, os.O_RDONLY)
        try:
            sync(fd)
            if hasattr(os, "posix_fadvise"):
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
        finally:
            os.close(fd)


def use_piecewise_writes(writer) -> None:
    """Point a DCP FileSystemWriter at PieceWiseFileSystem. A writer that does not have DCP's local file system
    (a future torch, fsspec) is left as it is: correct, only without the smaller writes."""
    if type(getattr(writer, "fs", None)) is FileSystem:
        writer.fs = PieceWiseFileSystem()
