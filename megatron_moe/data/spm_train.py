"""Train a small sentencepiece tokenizer (LLaMA-style ids: unk=0, bos=1, eos=2) for demos and tests.

    train_sentencepiece(texts, "out/tok.model", vocab_size=512)
    train_sentencepiece_from_files(["a.jsonl", "b.txt"], "out/tok.model", text_key="text")
    train_sentencepiece(texts, "out/tok.model", vocab_size=32000, llama_style=True)   # LLaMA-2's settings

Documents are fed line by line. When there are more lines than `max_sentences`, a seeded reservoir sample is
taken here (sentencepiece's own sampling is not reproducible across processes), so the same texts and seed give
the same tokenizer. The model is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
from pathlib import Path
from typing import Iterable, Iterator

from ..atomic import write_bytes_atomic
from .tokenizer import TokenizerError

log = logging.getLogger(__name__)


def _lines(texts: Iterable[str], max_line_chars: int, keep_indent: bool = False) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            line = line.rstrip() if keep_indent else line.strip()
            if line.strip():
                yield line[:max_line_chars]


def _sample(lines: Iterator[str], k: int, seed: int) -> list[str]:
    """Uniform sample of k lines (all of them when fewer), in stream order; one pass, O(k) memory."""
    rng, kept = random.Random(seed), []
    for n, line in enumerate(lines):
        if n < k:
            kept.append((n, line))
        elif (j := rng.randrange(n + 1)) < k:
            kept[j] = (n, line)
    return [line for _, line in sorted(kept)]


def train_sentencepiece(texts: Iterable[str], out_path: str | Path, vocab_size: int = 512,
                        model_type: str = "bpe", byte_fallback: bool = False,
                        max_sentences: int = 200_000, max_line_chars: int = 4192, seed: int = 1227,
                        llama_style: bool = False) -> Path:
    """Train a sentencepiece model on `texts` and write it to `out_path` (a `.model` file). Returns the path.
    `seed` fixes which lines are sampled when there are more than `max_sentences`. `llama_style` uses the
    trainer settings of LLaMA-2's tokenizer.model (BPE, byte fallback, split digits, identity normalisation,
    whitespace kept and indentation learned as whitespace-only pieces) instead of sentencepiece's defaults."""
    import sentencepiece as spm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentences = iter(_sample(_lines(texts, max_line_chars, keep_indent=llama_style), max_sentences, seed))
    style = dict(model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                 add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                 character_coverage=0.99995, max_sentencepiece_length=16) if llama_style else \
        dict(model_type=model_type, byte_fallback=byte_fallback, character_coverage=1.0 if byte_fallback else 0.9995)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences, model_writer=model, vocab_size=vocab_size, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=max_line_chars * 4,
            hard_vocab_limit=False, num_threads=max(1, min(4, os.cpu_count() or 1)), minloglevel=2, **style,
        )
    except RuntimeError as err:
        raise TokenizerError(f"sentencepiece training for {out_path} failed: {str(err).splitlines()[0]}") from None
    write_bytes_atomic(out_path, model.getvalue())
    log.info("wrote sentencepiece model %s (vocab %d)", out_path, vocab_size)
    return out_path


def iter_texts(paths: Iterable[str | Path], text_key: str = "text") -> Iterator[str]:
    """Texts of jsonl files (field `text_key`) and plain-text files (one document per line)."""
    for path in paths:
        path = Path(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                if path.suffix in (".jsonl", ".json"):
                    try:
                        value = json.loads(line).get(text_key)
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(value, str):
                        yield value
                else:
                    yield line


def train_sentencepiece_from_files(paths: Iterable[str | Path], out_path: str | Path, text_key: str = "text",
                                   **kwargs) -> Path:
    """`train_sentencepiece` over the documents of jsonl / txt files."""
    return train_sentencepiece(iter_texts(paths, text_key), out_path, **kwargs)
