"""Tokenize jsonl / txt files into one megatron-core indexed dataset (`PREFIX.bin` + `PREFIX.idx`).

    stats = preprocess_files(["a.jsonl"], "tok.model", "out/a", workers=4, append_eos=False)

- Each document becomes one sequence: BOS + tokens (+ EOS with `append_eos`), written with megatron-core's
  `IndexedDatasetBuilder` (uint16 when the vocabulary fits, else int32) and readable by `IndexedDataset`.
- jsonl: one JSON object per line, text under `text_key`. txt: one document per non-empty line.
  Blank lines are ignored; documents whose text is empty are skipped and counted.
- Streaming and multi-process: lines go to a `multiprocessing.Pool` in chunks; at most a few chunks per
  worker are in flight and results are consumed in input order, so memory stays flat and the output is
  byte-identical for any worker count.
- Bad lines (malformed JSON, not an object, missing key, non-string text, invalid UTF-8) raise
  `PreprocessError("FILE:LINE: ...")`, or with `skip_bad_lines` are skipped and counted in the stats.
- Output: an existing dataset at the prefix is refused unless `overwrite`. Both files are written under temporary
  names; then (overwrite only) the old PREFIX.idx is removed, PREFIX.bin is renamed into place and PREFIX.idx
  last, so a reader sees the complete new pair or no dataset, never a new .bin with an old .idx (readers also
  check that the pair's sizes agree, data/indexed.py). On error the temporaries are removed.
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
import torch
from tqdm import tqdm

from megatron_moe.data._mcore import DType, IndexedDatasetBuilder, get_bin_path, get_idx_path
from megatron_moe.data.tokenizer import Tokenizer, load_tokenizer
from megatron_moe.atomic import check_output, fsync_dir, fsync_file
from megatron_moe.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "txt")


class PreprocessError(UserError, ValueError):
    """Input that cannot be tokenized; the message is one line naming the file (and line)."""


@dataclass
class PreprocessStats:
    output_prefix: str
    documents: int = 0
    tokens: int = 0
    bad_lines: int = 0
    empty_documents: int = 0
    seconds: float = 0.0


# Worker side: one tokenizer per process, built by the pool initializer (or directly when workers == 1).
_TOKENIZER: Optional[Tokenizer] = None


def _init_worker(tokenizer_path: str) -> None:
    global _TOKENIZER
    _TOKENIZER = load_tokenizer(tokenizer_path)


def _text_of(raw: bytes, fmt: str, text_key: str) -> Optional[str]:
    """The document text of one input line, None for a blank line; raises ValueError describing a bad line."""
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
    return text


def _encode_chunk(task: tuple) -> list:
    """Encode one chunk of lines. Each entry: token array, "" for an empty document, None for a blank
    line, or an error message 'FILE:LINE: ...' (str)."""
    path, fmt, first_line, lines, text_key, append_eos = task
    out: list = []
    for i, raw in enumerate(lines):
        try:
            text = _text_of(raw, fmt, text_key)
        except ValueError as err:
            out.append(f"{path}:{first_line + i}: {err}")
            continue
        if text is None:
            out.append(None)
        elif not text.strip():
            out.append("")
        else:
            out.append(np.asarray(_TOKENIZER.encode_document(text, append_eos), dtype=np.int32))
    return out


def _chunks(paths: Sequence[Path], fmts: Sequence[str], chunk_lines: int, text_key: str,
            append_eos: bool) -> Iterator[tuple[tuple, int]]:
    """(task, number of bytes) per chunk of `chunk_lines` lines, streaming through the files in order."""
    for path, fmt in zip(paths, fmts):
        with open(path, "rb") as f:
            buf: list[bytes] = []
            first, nbytes = 1, 0
            for number, raw in enumerate(f, 1):
                if not buf:
                    first = number
                buf.append(raw)
                nbytes += len(raw)
                if len(buf) >= chunk_lines:
                    yield (str(path), fmt, first, buf, text_key, append_eos), nbytes
                    buf, nbytes = [], 0
            if buf:
                yield (str(path), fmt, first, buf, text_key, append_eos), nbytes


def _ordered_results(tasks: Iterator[tuple[tuple, int]], workers: int, tokenizer_path: str,
                     ahead_per_worker: int = 4) -> Iterator[tuple[list, int]]:
    """Encoded chunks in input order; with workers > 1 a Pool with at most workers*ahead chunks in flight."""
    if workers <= 1:
        for task, nbytes in tasks:
            yield _encode_chunk(task), nbytes
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_path,)) as pool:
        pending: collections.deque = collections.deque()
        for task, nbytes in tasks:
            pending.append((pool.apply_async(_encode_chunk, (task,)), nbytes))
            if len(pending) >= workers * ahead_per_worker:
                result, n = pending.popleft()
                yield result.get(), n
        while pending:
            result, n = pending.popleft()
            yield result.get(), n


def _input_format(path: Path, input_format: str) -> str:
    if input_format not in FORMATS:
        raise PreprocessError(f"input format {input_format!r} is not one of {', '.join(FORMATS)}")
    if input_format != "auto":
        return input_format
    return "jsonl" if path.suffix in (".jsonl", ".json", ".ndjson") else "txt"


def preprocess_files(inputs: Sequence[str | Path], tokenizer: str | Path, output_prefix: str | Path,
                     text_key: str = "text", input_format: str = "auto", workers: int = 1,
                     append_eos: bool = False, skip_bad_lines: bool = False, chunk_lines: int = 128,
                     progress: bool = True, overwrite: bool = False) -> PreprocessStats:
    """Tokenize `inputs` (in order) into the indexed dataset `output_prefix`.{bin,idx}; see the module doc."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise PreprocessError("no input files given")
    for p in paths:
        if not p.is_file():
            raise PreprocessError(f"input {p} does not exist or is not a file")
    fmts = [_input_format(p, input_format) for p in paths]
    _init_worker(str(tokenizer))  # fails fast on a bad tokenizer; also the tokenizer for workers == 1
    tok = _TOKENIZER
    if append_eos and tok.eos_id is None:
        raise PreprocessError(f"tokenizer {tokenizer} has no EOS token but --append-eos was given")
    prefix = str(output_prefix)
    existing = [p for p in (get_bin_path(prefix), get_idx_path(prefix)) if os.path.exists(p)]
    if existing and not overwrite:
        raise PreprocessError(f"{existing[0]} already exists; choose another --save prefix or pass --overwrite")
    check_output(prefix + ".bin", overwrite=True)  # the directory is writable (or can be created)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{prefix}.tmp-{os.getpid()}"
    stats = PreprocessStats(output_prefix=prefix)
    total_bytes = sum(p.stat().st_size for p in paths)
    start = time.perf_counter()
    builder = IndexedDatasetBuilder(get_bin_path(tmp), dtype=DType.optimal_dtype(tok.vocab_size))
    finished = False
    try:
        with tqdm(total=total_bytes, unit="B", unit_scale=True, disable=not progress, desc=Path(prefix).name,
                  mininterval=0.5) as bar:
            tasks = _chunks(paths, fmts, chunk_lines, text_key, append_eos)
            for encoded, nbytes in _ordered_results(tasks, workers, str(tokenizer)):
                for item in encoded:
                    if item is None:
                        continue
                    if isinstance(item, str):
                        if item == "":
                            stats.empty_documents += 1
                            continue
                        if not skip_bad_lines:
                            raise PreprocessError(item)
                        stats.bad_lines += 1
                        if stats.bad_lines <= 5:
                            log.warning("skipping bad line %s", item)
                        continue
                    builder.add_item(torch.from_numpy(item))
                    builder.end_document()
                    stats.documents += 1
                    stats.tokens += int(item.size)
                bar.update(nbytes)
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{stats.documents / elapsed:.0f} docs/s, {stats.tokens / elapsed:.0f} tok/s",
                                    refresh=False)
        if stats.documents == 0:
            names = ", ".join(str(p) for p in paths)
            raise PreprocessError(f"{names}: empty input (no documents"
                                  + (f"; {stats.bad_lines} bad lines skipped)" if stats.bad_lines else ")"))
        builder.finalize(get_idx_path(tmp))
        for path in (get_bin_path(tmp), get_idx_path(tmp)):
            fsync_file(path)
        if os.path.exists(get_idx_path(prefix)):
            os.remove(get_idx_path(prefix))          # the old pair stops being a dataset first
        os.replace(get_bin_path(tmp), get_bin_path(prefix))
        os.replace(get_idx_path(tmp), get_idx_path(prefix))  # the commit point
        fsync_dir(Path(prefix).parent)
        finished = True
    finally:
        if not builder.data_file.closed:
            builder.data_file.close()
        if not finished:
            for path in (get_bin_path(tmp), get_idx_path(tmp)):
                if os.path.exists(path):
                    os.remove(path)
    stats.seconds = time.perf_counter() - start
    log.info("wrote %s.{bin,idx}: %d documents, %d tokens, %d bad lines skipped, %d empty documents, "
             "%.1f s (%.0f docs/s, %.0f tok/s)", prefix, stats.documents, stats.tokens, stats.bad_lines,
             stats.empty_documents, stats.seconds, stats.documents / max(stats.seconds, 1e-9),
             stats.tokens / max(stats.seconds, 1e-9))
    return stats
