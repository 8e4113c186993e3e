"""Train a small sentencepiece tokenizer (unk=0, bos=1, eos=2) on jsonl / txt files, for demos and tests.

    megatron-moe train-tokenizer --input a.jsonl b.txt --save tok.model [--vocab-size 512]
"""
from __future__ import annotations

from .common import add_save, positive


def add_arguments(p) -> None:
    p.add_argument("--input", nargs="+", required=True, help="jsonl (field --text-key) or txt files")
    add_save(p, "path of the .model file to write (--output: old spelling)", "--output")
    p.add_argument("--text-key", default="text")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    p.add_argument("--byte-fallback", action="store_true", help="LLaMA-style byte fallback pieces")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer file")


def main(args) -> int:
    from pathlib import Path

    from ..atomic import check_output
    from ..data.spm_train import train_sentencepiece_from_files
    from ..errors import UserError

    positive("--vocab-size", args.vocab_size)
    for path in args.input:
        if not Path(path).is_file():
            raise UserError(f"input {path} does not exist")
    check_output(args.save, overwrite=args.overwrite)
    train_sentencepiece_from_files(args.input, args.save, text_key=args.text_key, vocab_size=args.vocab_size,
                                   model_type=args.model_type, byte_fallback=args.byte_fallback)
    return 0
