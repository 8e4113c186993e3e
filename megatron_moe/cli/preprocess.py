"""Tokenize jsonl / txt documents into a megatron-core indexed dataset (PREFIX.bin + PREFIX.idx).

    megatron-moe preprocess --input DATA.jsonl --tokenizer TOKENIZER --save OUT/PREFIX [--workers N]
        [--text-key text] [--input-format jsonl|txt] [--append-eos] [--skip-bad-lines] [--overwrite]

TOKENIZER is a sentencepiece .model, a HF tokenizer.json, or a directory holding either. Each document gets
BOS (and EOS with --append-eos). An existing dataset at PREFIX is refused unless --overwrite. Bad input prints
one `error: FILE:LINE: ...` line and exits with status 2.
"""
from __future__ import annotations

import logging

from .common import add_progress, add_save, positive


def add_arguments(p) -> None:
    from ..data.preprocess import FORMATS

    p.add_argument("--input", nargs="+", required=True, help="input files (jsonl or txt), read in order")
    p.add_argument("--text-key", default="text", help="jsonl field holding the document text")
    p.add_argument("--input-format", choices=FORMATS, default="auto",
                   help="jsonl (one object per line) or txt (one document per line); auto by suffix")
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model, tokenizer.json or HF dir")
    add_save(p, "dataset prefix: writes PREFIX.bin and PREFIX.idx (--output-prefix: old spelling)",
             "--output-prefix")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at the prefix")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--append-eos", action="store_true", help="end each document with EOS")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count bad lines instead of failing")
    p.add_argument("--chunk-lines", type=int, default=128, help="lines per work unit")
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
