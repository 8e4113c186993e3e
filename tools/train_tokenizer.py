#!/usr/bin/env python
"""Train a small sentencepiece tokenizer (unk=0, bos=1, eos=2) on jsonl / txt files, for demos and tests.

    python tools/train_tokenizer.py --input a.jsonl b.txt --output tok.model [--vocab-size 512]
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_moe.data.spm_train import train_sentencepiece_from_files  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="jsonl (field --text-key) or txt files")
    parser.add_argument("--output", required=True, help="path of the .model file to write")
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    parser.add_argument("--byte-fallback", action="store_true", help="LLaMA-style byte fallback pieces")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in args.input:
        if not os.path.isfile(path):
            print(f"error: input {path} does not exist", file=sys.stderr)
            return 2
    try:
        train_sentencepiece_from_files(args.input, args.output, text_key=args.text_key, vocab_size=args.vocab_size,
                                       model_type=args.model_type, byte_fallback=args.byte_fallback)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
