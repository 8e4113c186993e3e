"""Tokenize corpora (jsonl / txt, plain or compressed; parquet; saved HF datasets) into one megatron-core
indexed dataset (`PREFIX.bin` + `PREFIX.idx`).

    stats = preprocess_files(["a.jsonl.zst", "shards/*.parquet"], "tok.model", "out/a", workers=4)

- Inputs (data/sources.py): files, globs and directories of shards, in the order given and sorted within a glob
  or directory; decompression streams (gzip, zstandard, lzma), nothing is decompressed to disk.
- Each document becomes one sequence: BOS + tokens (+ EOS with `append_eos`), uint16 when the vocabulary fits,
  else int32, in megatron-core's format (written by data/indexed_writer.py, readable by `IndexedDataset`).
- jsonl: one JSON object per line, text under `text_key`; txt: one document per non-empty line; parquet and
  saved datasets: the column `text_key`. Blank lines are ignored; documents whose text is empty are skipped and
  counted.
- Streaming and multi-process: this process reads (and decompresses) the shards and hands work units of
  `chunk_lines` lines or rows to a pool of `workers` tokenizer processes, across shard boundaries; at most a few
  units per worker are in flight and results are written in input order, so memory stays flat and the output is
  byte-identical for any worker count. With `workers == 1` everything runs in this process.
- Tokenizing: sentencepiece models that qualify use the exact segment cache of data/spm_fast.py; JSON lines are
  parsed with orjson (a line it rejects is parsed again with `json` for the error message).
- Bad lines (malformed JSON, not an object, missing key, non-string text, invalid UTF-8, a null value) raise
  `PreprocessError("FILE:LINE: ...")` (parquet / Arrow: `FILE:row N: ...`), or with `skip_bad_lines` are skipped
  and counted. Bad files (corrupt or truncated compressed data, no such column) always raise, naming the file.
- Output: an existing dataset at the prefix is refused unless `overwrite`. Both files are written under temporary
  names (atomic.AtomicFiles: `.NAME.tmp-HOST-PID`); then (overwrite only) the old PREFIX.idx is removed,
  PREFIX.bin is renamed into place and PREFIX.idx last, so a reader sees the complete new pair or no dataset,
  never a new .bin with an old .idx (readers also check that the pair's sizes agree, data/indexed.py). On error or
  interruption (Ctrl-C, SIGTERM: the worker pool is terminated, its workers ignore Ctrl-C) the temporaries are
  removed; a full disk is one line naming the dataset.
"""
from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..atomic import AtomicFiles, writing
from .indexed_writer import IndexedWriter, optimal_dtype
from .sources import FORMATS, PreprocessError, Shard, expand_inputs, read_shard  # noqa: F401 (re-exported)
from .tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class PreprocessStats:
    output_prefix: str
    documents: int = 0
    tokens: int = 0
    bad_lines: int = 0
    empty_documents: int = 0
    seconds: float = 0.0


# Worker side: one tokenizer per process (inherited through fork, else built by the pool initializer).
_TOKENIZER: Optional[Tokenizer] = None


def _init_worker(tokenizer_path: str) -> None:
    global _TOKENIZER
    if _TOKENIZER is None or _TOKENIZER.path != tokenizer_path:
        _TOKENIZER = load_tokenizer(tokenizer_path)


def _pool_worker_init(tokenizer_path: str) -> None:
    """Pool workers leave Ctrl-C to this process, which stops them (signals.worker_ignores_interrupts)."""
    from ..signals import worker_ignores_interrupts

    worker_ignores_interrupts()
    _init_worker(tokenizer_path)


def _text_of(raw: bytes, fmt: str, text_key: str) -> Optional[str]:
    """The document text of one input line, None for a blank line; raises ValueError describing a bad line.
    The reference path: the fast path below falls back to it for every line it cannot take as is."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if fmt == "txt":
        line = line.rstrip("\r\n")
        return line if line.strip() else None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if text_key not in obj:
        keys = ", ".join(sorted(obj)[:8]) or "none"
        raise ValueError(f"missing key {text_key!r} (keys: {keys})")
    text = obj[text_key]
    if not isinstance(text, str):
        raise ValueError(f"key {text_key!r} holds {type(text).__name__}, not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a \ud800-style escape: valid JSON, but no text a tokenizer can take
        raise ValueError(f"key {text_key!r} holds an unpaired surrogate at character {err.start}") from None
    return text


def _texts_of_lines(lines: list, fmt: str, text_key: str, path: str, first: int):
    """(texts, errors 'FILE:LINE: ...') of raw lines; blank lines dropped."""
    import orjson

    texts, errors = [], []
    for i, raw in enumerate(lines):
        if fmt == "jsonl":
            try:
                obj = orjson.loads(raw)
                text = obj[text_key] if type(obj) is dict else None
            except (orjson.JSONDecodeError, KeyError):
                text = None
            if type(text) is str:
                texts.append(text)
                continue
        try:
            text = _text_of(raw, fmt, text_key)
        except ValueError as err:
            errors.append(f"{path}:{first + i}: {err}")
            continue
        if text is not None:
            texts.append(text)
    return texts, errors


def _encode_task(task: tuple) -> tuple[bytes, np.ndarray, list, int]:
    """Encode one work unit: (token bytes, tokens per document, error messages in order, empty documents)."""
    path, kind, first, payload, text_key, append_eos, dtype = task
    if kind in ("jsonl", "txt"):
        texts, errors = _texts_of_lines(payload, kind, text_key, path, first)
    else:
        texts, errors = [], []
        for i, text in enumerate(payload):
            if text is None:
                errors.append(f"{path}:row {first + i}: {text_key!r} is null")
            else:
                texts.append(text)
    kept = [t for t in texts if t and not t.isspace()]
    data, lengths = _TOKENIZER.encode_packed(kept, np.dtype(dtype), append_eos)
    return data, lengths, errors, len(texts) - len(kept)


def _tasks(shards: Sequence[Shard], chunk: int, text_key: str, append_eos: bool,
           dtype: str) -> Iterator[tuple[Optional[tuple], int]]:
    """(task or None, bytes of input consumed) per work unit, streaming through the shards in order."""
    for shard in shards:
        for payload, first, nbytes in read_shard(shard, text_key, chunk):
            task = (str(shard.path), shard.kind, first, payload, text_key, append_eos, dtype) if payload else None
            yield task, nbytes


def _ordered_results(tasks: Iterator[tuple[Optional[tuple], int]], workers: int, tokenizer_path: str,
                     ahead_per_worker: int = 4) -> Iterator[tuple[Optional[tuple], int]]:
    """Encoded units in input order; with workers > 1 a Pool with at most workers*ahead units in flight."""
    if workers <= 1:
        for task, nbytes in tasks:
            yield (_encode_task(task) if task else None), nbytes
        return
    from ..signals import signals_deferred

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with signals_deferred():  # a worker forked while Ctrl-C arrives must not die with a traceback
        pool = ctx.Pool(workers, initializer=_pool_worker_init, initargs=(tokenizer_path,))
    with pool:  # leaving it, also on Ctrl-C / SIGTERM / an error here, terminates the workers
        pending: collections.deque = collections.deque()
        for task, nbytes in tasks:
            pending.append((pool.apply_async(_encode_task, (task,)) if task else None, nbytes))
            while len(pending) >= workers * ahead_per_worker or (pending and pending[0][0] is None):
                result, n = pending.popleft()
                yield (result.get() if result is not None else None), n
        while pending:
            result, n = pending.popleft()
            yield (result.get() if result is not None else None), n


def _progress_bar(total: int, name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=name, mininterval=0.5)


def preprocess_files(inputs: Sequence[str | Path], tokenizer: str | Path, output_prefix: str | Path,
                     text_key: str = "text", input_format: str = "auto", workers: int = 1,
                     append_eos: bool = False, skip_bad_lines: bool = False, chunk_lines: int = 128,
                     progress: bool = True, overwrite: bool = False) -> PreprocessStats:
    """Tokenize `inputs` (in order) into the indexed dataset `output_prefix`.{bin,idx}; see the module doc."""
    shards = expand_inputs(inputs, input_format)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker: --workers is the parallelism
    _init_worker(str(tokenizer))  # fails fast on a bad tokenizer; also the tokenizer for workers == 1
    tok = _TOKENIZER
    if append_eos and tok.eos_id is None:
        raise PreprocessError(f"tokenizer {tokenizer} has no EOS token but --append-eos was given")
    prefix = str(output_prefix)
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    inputs_resolved = {s.path.resolve() for s in shards}
    for out in (bin_path, idx_path):
        if Path(out).resolve() in inputs_resolved:
            raise PreprocessError(f"output {out} is also an input; choose another --save prefix")
    existing = [p for p in (bin_path, idx_path) if os.path.exists(p)]
    if existing and not overwrite:
        raise PreprocessError(f"{existing[0]} already exists; choose another --save prefix or pass --overwrite")
    stats = PreprocessStats(output_prefix=prefix)
    dtype = optimal_dtype(tok.vocab_size)
    start = time.perf_counter()
    # .idx last: it is what makes the pair a dataset (atomic.AtomicFiles removes the old one first)
    with AtomicFiles([bin_path, idx_path], overwrite=overwrite) as (tmp_bin, tmp_idx), writing(bin_path):
        writer = IndexedWriter(str(tmp_bin), dtype)
        bar = _progress_bar(sum(s.path.stat().st_size for s in shards), Path(prefix).name, progress)
        try:
            _tokenize_into(writer, shards, chunk_lines, text_key, append_eos, dtype, workers, str(tokenizer),
                           skip_bad_lines, stats, bar, start)
            if stats.documents == 0:
                names = ", ".join(str(p) for p in inputs)
                raise PreprocessError(f"{names}: empty input (no documents"
                                      + (f"; {stats.bad_lines} bad lines skipped)" if stats.bad_lines else ")"))
            writer.finalize(str(tmp_idx))
        finally:
            if bar is not None:
                bar.close()
            writer.close()
    stats.seconds = time.perf_counter() - start
    log.info("wrote %s.{bin,idx}: %d documents, %d tokens, %d bad lines skipped, %d empty documents, "
             "%.1f s (%.0f docs/s, %.0f tok/s)", prefix, stats.documents, stats.tokens, stats.bad_lines,
             stats.empty_documents, stats.seconds, stats.documents / max(stats.seconds, 1e-9),
             stats.tokens / max(stats.seconds, 1e-9))
    return stats


def _tokenize_into(writer, shards, chunk_lines, text_key, append_eos, dtype, workers, tokenizer_path,
                   skip_bad_lines, stats, bar, start) -> None:
    """Stream every shard through the tokenizers (in order) into `writer`, counting into `stats`."""
    tasks = _tasks(shards, chunk_lines, text_key, append_eos, dtype.str)
    for result, nbytes in _ordered_results(tasks, workers, tokenizer_path):
        if result is not None:
            data, lengths, errors, empty = result
            if errors and not skip_bad_lines:
                raise PreprocessError(errors[0])
            for message in errors:
                stats.bad_lines += 1
                if stats.bad_lines <= 5:
                    log.warning("skipping bad line %s", message)
            stats.empty_documents += empty
            if len(lengths):
                writer.add_documents(data, lengths)
                stats.documents += len(lengths)
                stats.tokens += int(lengths.sum())
        if bar is not None:
            bar.update(nbytes)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{stats.documents / elapsed:.0f} docs/s, {stats.tokens / elapsed:.0f} tok/s",
                                refresh=False)
