"""Train a small sentencepiece tokenizer (LLaMA-style ids: unk=0, bos=1, eos=2) for demos and tests.

    train_sentencepiece(texts, "out/tok.model", vocab_size=512)
    train_sentencepiece_from_files(["a.jsonl", "b.txt"], "out/tok.model", text_key="text")

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


def _lines(texts: Iterable[str], max_line_chars: int) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line:
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
                        max_sentences: int = 200_000, max_line_chars: int = 4192, seed: int = 1227) -> Path:
    """Train a sentencepiece model on `texts` and write it to `out_path` (a `.model` file). Returns the path.
    `seed` fixes which lines are sampled when there are more than `max_sentences`."""
    import sentencepiece as spm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentences = iter(_sample(_lines(texts, max_line_chars), max_sentences, seed))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences, model_writer=model, vocab_size=vocab_size, model_type=model_type,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=byte_fallback,
            character_coverage=1.0 if byte_fallback else 0.9995, input_sentence_size=0,
            shuffle_input_sentence=False, max_sentence_length=max_line_chars * 4, hard_vocab_limit=False,
            num_threads=max(1, min(4, os.cpu_count() or 1)), minloglevel=2,
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
