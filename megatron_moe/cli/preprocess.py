"""Tokenize corpora into a megatron-core indexed dataset (PREFIX.bin + PREFIX.idx).

    megatron-moe preprocess --input DATA.jsonl [SHARDS/*.jsonl.zst DIR ...] --tokenizer TOKENIZER
        --save OUT/PREFIX [--workers N] [--text-key text] [--input-format auto|jsonl|txt|parquet|arrow]
        [--append-eos] [--skip-bad-lines] [--overwrite]

Inputs: files, globs (quote them) and directories, read in the order given (sorted within a glob or directory):
jsonl and txt, plain or .gz / .zst / .xz (streamed, never decompressed to disk); parquet (the --text-key
column); a dataset saved with HF datasets' save_to_disk (its directory). TOKENIZER is a sentencepiece .model,
a HF tokenizer.json, or a directory holding either. Each document gets BOS (and EOS with --append-eos).
An existing dataset at PREFIX is refused unless --overwrite. Bad input prints one `error: FILE...` line and
exits with status 2, leaving no output behind.
"""
from __future__ import annotations

import logging

from .common import add_progress, add_save, positive


def add_arguments(p) -> None:
    from ..data.sources import FORMATS

    p.add_argument("--input", nargs="+", required=True,
                   help="input files, globs or directories (jsonl/txt, optionally .gz/.zst/.xz; parquet; "
                        "a save_to_disk dataset), read in order")
    p.add_argument("--text-key", default="text", help="jsonl field or parquet/dataset column holding the text")
    p.add_argument("--input-format", choices=FORMATS, default="auto",
                   help="jsonl (one object per line), txt (one document per line), parquet, arrow (a "
                        "save_to_disk shard); auto by suffix")
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model, tokenizer.json or HF dir")
    add_save(p, "dataset prefix: writes PREFIX.bin and PREFIX.idx (--output-prefix: old spelling)",
             "--output-prefix")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at the prefix")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--append-eos", action="store_true", help="end each document with EOS")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count bad lines instead of failing")
    p.add_argument("--chunk-lines", type=int, default=128, help="lines or rows per work unit")
    add_progress(p)


def main(args) -> int:
    from ..data.preprocess import preprocess_files

    positive("--workers", args.workers)
    positive("--chunk-lines", args.chunk_lines)
    stats = preprocess_files(args.input, args.tokenizer, args.save, text_key=args.text_key,
                             input_format=args.input_format, workers=args.workers, append_eos=args.append_eos,
                             skip_bad_lines=args.skip_bad_lines, chunk_lines=args.chunk_lines,
                             progress=not args.no_progress, overwrite=args.overwrite)
    if stats.bad_lines:
        logging.getLogger(__name__).warning("skipped %d bad lines", stats.bad_lines)
    return 0
