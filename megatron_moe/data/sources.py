"""Corpora as they are distributed: files, globs and directories of shards, read as streams of documents.

    shards = expand_inputs(["data/*.jsonl.zst", "fineweb/", "hf_saved_dataset/"], input_format="auto")
    for kind, payload, first, nbytes in read_shard(shards[0], text_key="text", chunk=256): ...

Shards, in the order given; a glob or a directory expands to its files sorted by path (directories
recursively, hidden files skipped), so the order is deterministic:
- jsonl (`.jsonl`, `.json`, `.ndjson`) and txt (`.txt`; one document per line), plain or compressed
  (`.gz`, `.zst`/`.zstd`, `.xz`). Decompression streams through gzip / zstandard / lzma; nothing is written
  to disk. Payload: a list of raw lines (bytes).
- parquet (`.parquet`): the text column (`--text-key`) read with pyarrow, a batch of rows at a time.
- datasets saved with HF `datasets` (`Dataset.save_to_disk`): a directory with `state.json`; its Arrow shards
  (`_data_files`, in order) are read with pyarrow. A `DatasetDict` directory is refused naming its splits.
  Payload for both: a list of str (None for a null value).
A file whose format cannot be told from its name is txt with `--input-format auto` (as before); a directory
expands only to files with the suffixes above.

Every problem is a `PreprocessError` naming the file: a missing path, a glob that matches nothing, a corrupt or
truncated compressed stream, a parquet or Arrow file without the text column or with a non-string one.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import UserError

FORMATS = ("auto", "jsonl", "txt", "parquet", "arrow")
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst", ".xz": "xz"}
_SUFFIX_KIND = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "txt", ".parquet": "parquet",
                ".arrow": "arrow"}
READ_BYTES = 1 << 20
ROWS_PER_BATCH = 256


class PreprocessError(UserError, ValueError):
    """Input that cannot be tokenized; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class Shard:
    path: Path
    kind: str              # jsonl | txt | parquet | arrow
    compression: str = ""  # "" | gz | zst | xz


def _kind_of(path: Path, input_format: str, from_directory: bool) -> tuple[str, str] | None:
    name = path.name.lower()
    suffixes = Path(name).suffixes
    compression = COMPRESSIONS.get(suffixes[-1], "") if suffixes else ""
    inner = suffixes[-2] if compression and len(suffixes) > 1 else (suffixes[-1] if suffixes and not compression else "")
    if input_format != "auto":
        kind = input_format
    elif inner in _SUFFIX_KIND:
        kind = _SUFFIX_KIND[inner]
    elif from_directory:
        return None
    else:
        kind = "txt"
    if compression and kind in ("parquet", "arrow"):
        raise PreprocessError(f"{path}: {kind} files are compressed inside; a {compression} wrapper is not read")
    return kind, compression


def _hf_dataset(directory: Path, input_format: str) -> list[Shard]:
    if input_format not in ("auto", "arrow"):
        raise PreprocessError(f"{directory} is a saved HF dataset, not {input_format}")
    try:
        state = json.loads((directory / "state.json").read_text())
        files = [f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PreprocessError(f"{directory / 'state.json'}: not a datasets save_to_disk state "
                              f"({type(err).__name__}: {err})") from None
    if state.get("_indices_data_files"):
        raise PreprocessError(f"{directory}: the saved dataset keeps an indices mapping; save it again after "
                              f"flatten_indices()")
    shards = []
    for name in files:
        if not isinstance(name, str) or "/" in name or name in (".", ".."):
            raise PreprocessError(f"{directory / 'state.json'}: data file {name!r} is not a file in {directory}")
        if not (directory / name).is_file():
            raise PreprocessError(f"{directory / name}: listed in state.json but missing")
        shards.append(Shard(directory / name, "arrow"))
    return shards


def _expand_dir(directory: Path, input_format: str) -> list[Shard]:
    if (directory / "state.json").is_file():
        return _hf_dataset(directory, input_format)
    if (directory / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in directory.iterdir() if (p / "state.json").is_file())
        raise PreprocessError(f"{directory} is a DatasetDict with splits {', '.join(splits) or 'none'}; "
                              f"pass one split's directory, e.g. {directory / (splits[0] if splits else 'train')}")
    shards = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_dir() and (p / "state.json").is_file():
            shards += _hf_dataset(p, input_format)
        elif p.is_file() and (found := _kind_of(p, input_format, from_directory=True)):
            shards.append(Shard(p, *found))
    if not shards:
        raise PreprocessError(f"directory {directory} holds no jsonl, txt, parquet or saved-dataset files")
    return shards


def expand_inputs(inputs: Sequence[str | Path], input_format: str = "auto") -> list[Shard]:
    """The shards of `inputs` in order (see the module doc); PreprocessError on a path that yields none."""
    if input_format not in FORMATS:
        raise PreprocessError(f"input format {input_format!r} is not one of {', '.join(FORMATS)}")
    if not inputs:
        raise PreprocessError("no input files given")
    shards: list[Shard] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            shards += _expand_dir(p, input_format)
        elif p.is_file():
            shards.append(Shard(p, *_kind_of(p, input_format, from_directory=False)))
        elif glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise PreprocessError(f"input {item} matches no file")
            for m in matches:
                mp = Path(m)
                shards += _expand_dir(mp, input_format) if mp.is_dir() else \
                    [Shard(mp, *_kind_of(mp, input_format, from_directory=False))]
        else:
            raise PreprocessError(f"input {p} does not exist or is not a file")
    return shards


# ------------------------------------------------------------------------------------------ reading
def _zstd_chunks(raw) -> Iterator[bytes]:
    """Decompressed bytes of every zstd frame in `raw`; a frame cut short is an error (zstandard's streaming
    reader returns what it has without saying so)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj, fed = dctx.decompressobj(), False
    while block := raw.read(READ_BYTES):
        while block:
            out = obj.decompress(block)
            fed = True
            if out:
                yield out
            if obj.eof:
                block, obj, fed = obj.unused_data, dctx.decompressobj(), False
            else:
                block = b""
    if fed:
        raise EOFError("the last zstd frame is truncated")


def _byte_chunks(shard: Shard, raw) -> Iterator[bytes]:
    if shard.compression == "zst":
        yield from _zstd_chunks(raw)
        return
    if shard.compression == "gz":
        import gzip

        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif shard.compression == "xz":
        import lzma

        stream = lzma.LZMAFile(raw, "rb")
    else:
        stream = raw
    while block := stream.read(READ_BYTES):
        yield block


def _line_tasks(shard: Shard, chunk: int) -> Iterator[tuple[list, int, int]]:
    """(raw lines, first line number, compressed bytes consumed) per `chunk` lines."""
    with open(shard.path, "rb") as raw:
        tail, lines, first, number, seen = b"", [], 1, 0, 0
        try:
            for block in _byte_chunks(shard, raw):
                buf = tail + block
                cut = buf.rfind(b"\n") + 1
                tail = buf[cut:]
                if not cut:
                    continue
                for line in buf[:cut].split(b"\n")[:-1]:
                    number += 1
                    if not lines:
                        first = number
                    lines.append(line)
                    if len(lines) >= chunk:
                        pos = raw.tell()
                        yield lines, first, pos - seen
                        lines, seen = [], pos
        except (OSError, EOFError, ValueError) as err:
            what = {"gz": "gzip", "zst": "zstd", "xz": "xz"}.get(shard.compression, "")
            raise PreprocessError(f"{shard.path}: corrupt or truncated {what + ' ' if what else ''}data "
                                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        if tail:
            number += 1
            first = first if lines else number
            lines.append(tail)
        if lines:
            yield lines, first, os.path.getsize(shard.path) - seen


def _check_column(shard: Shard, schema, text_key: str) -> None:
    import pyarrow as pa

    if text_key not in schema.names:
        cols = ", ".join(schema.names[:8]) or "none"
        raise PreprocessError(f"{shard.path}: no column {text_key!r} (columns: {cols}); choose one with --text-key")
    kind = schema.field(text_key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise PreprocessError(f"{shard.path}: column {text_key!r} holds {kind}, not strings")


def _row_tasks(shard: Shard, text_key: str, chunk: int) -> Iterator[tuple[list, int, int]]:
    """(texts, first row number, file bytes accounted) per `chunk` rows of a parquet or Arrow file."""
    import pyarrow as pa

    size = os.path.getsize(shard.path)
    try:
        if shard.kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(shard.path)
            _check_column(shard, pf.schema_arrow, text_key)
            total = max(pf.metadata.num_rows, 1)
            batches = pf.iter_batches(batch_size=chunk, columns=[text_key])
        else:
            reader = pa.ipc.open_stream(pa.memory_map(str(shard.path), "r"))
            _check_column(shard, reader.schema, text_key)
            total = None
            batches = (b.slice(i, chunk) for b in reader for i in range(0, b.num_rows, chunk))
        row, done = 1, 0
        for batch in batches:
            texts = batch.column(text_key).to_pylist()
            if not texts:
                continue
            step = size * len(texts) // total if total else 0
            yield texts, row, step
            row += len(texts)
            done += step
    except PreprocessError:
        raise
    except (OSError, pa.ArrowException, ValueError) as err:
        raise PreprocessError(f"{shard.path}: unreadable {shard.kind} file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not total:
        done = 0
    yield [], row, size - done


def read_shard(shard: Shard, text_key: str, chunk: int) -> Iterator[tuple[list, int, int]]:
    """(payload, first line/row number, bytes of the file consumed) per work unit of one shard."""
    if shard.kind in ("jsonl", "txt"):
        return _line_tasks(shard, chunk)
    return _row_tasks(shard, text_key, chunk)
