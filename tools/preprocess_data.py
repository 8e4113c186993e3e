#!/usr/bin/env python
"""Tokenize jsonl / txt documents into a megatron-core indexed dataset (PREFIX.bin + PREFIX.idx).

    python tools/preprocess_data.py --input DATA.jsonl [--text-key text] [--input-format jsonl|txt] \
        --tokenizer TOKENIZER --output-prefix OUT/PREFIX [--workers N] [--append-eos] [--skip-bad-lines]

TOKENIZER is a sentencepiece .model, a HF tokenizer.json, or a directory holding either. Each document gets
BOS (and EOS with --append-eos). Bad input prints one `error: FILE:LINE: ...` line and exits with status 2.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_moe.data.preprocess import FORMATS, PreprocessError, preprocess_files  # noqa: E402
from megatron_moe.data.tokenizer import TokenizerError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="input files (jsonl or txt), read in order")
    parser.add_argument("--text-key", default="text", help="jsonl field holding the document text")
    parser.add_argument("--input-format", choices=FORMATS, default="auto",
                        help="jsonl (one object per line) or txt (one document per line); auto by suffix")
    parser.add_argument("--tokenizer", required=True, help="sentencepiece .model, tokenizer.json or HF dir")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--append-eos", action="store_true", help="end each document with EOS")
    parser.add_argument("--skip-bad-lines", action="store_true", help="skip and count bad lines instead of failing")
    parser.add_argument("--chunk-lines", type=int, default=128, help="lines per work unit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = preprocess_files(args.input, args.tokenizer, args.output_prefix, text_key=args.text_key,
                                 input_format=args.input_format, workers=max(1, args.workers),
                                 append_eos=args.append_eos, skip_bad_lines=args.skip_bad_lines,
                                 chunk_lines=max(1, args.chunk_lines), progress=not args.no_progress)
    except (PreprocessError, TokenizerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if stats.bad_lines:
        logging.getLogger("preprocess_data").warning("skipped %d bad lines", stats.bad_lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
