"""A deterministic mixed corpus and a LLaMA-style sentencepiece tokenizer from text on this machine (no download).

    path = build_mixed_corpus("bench/corpus.jsonl", target_bytes=100 << 20)
    model = train_llama_style_spm([path], "bench/tok.model", vocab_size=32000)

Documents, in a seeded order of the sorted file list: the Python standard library's `.py`, `.rst`, `.txt` and
`.md` files, then those of this interpreter's site-packages (the venv built from requirements/*.lock, so the same
lock gives the same files), up to `target_bytes` of JSONL. That mixes code (indentation, whitespace runs), prose
(reST/Markdown docs) and unicode (the standard library's tests and encodings). `extra_documents()` adds short
documents that stress tokenizer edge cases (whitespace runs, mixed scripts, emoji, control characters).

The tokenizer uses the settings of LLaMA-2's `tokenizer.model` (BPE, byte fallback, split digits, identity
normalisation, whitespace kept, whitespace-only pieces allowed).
"""
from __future__ import annotations

import json
import os
import random
import sysconfig
from pathlib import Path
from typing import Iterator

SUFFIXES = (".py", ".rst", ".txt", ".md")


def _files(max_bytes: int = 512_000) -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    out = []
    for root in (stdlib, purelib):
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).parts
            if root == stdlib and rel and rel[0] == "site-packages":
                continue
            if p.suffix in SUFFIXES and p.is_file() and 0 < p.stat().st_size <= max_bytes:
                out.append(p)
    return out


def extra_documents() -> list[str]:
    """Short documents that exercise tokenizer edge cases."""
    return [
        "    indented\n\t\ttabs\n\n\n\nblank lines   trailing   \n",
        " leading space", "  two leading spaces", "trailing space ", "x" + " " * 37 + "y",
        "Grüße aus Köln — naïve café, señor; Ελληνικά; русский текст; עברית; العربية",
        "日本語のテキストと中文文本，한국어 텍스트。", "emoji 🙂🚀👩‍👩‍👧 and flags 🇩🇪🇯🇵",
        "numbers 1234567890 3.14159 1e-10 0xdeadBEEF 2026-12-07", "\u00a0non-breaking\u2009thin\u3000ideographic",
        "zero\u200bwidth\u200djoiner\ufeffbom", "control \x01\x02\x7f chars", "a\r\nwindows\r\nlines\r\n",
        "=" * 80, "-" * 33 + "+" + "-" * 17, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "ababababababababababa",
        "▁ literal metaspace ▁▁ and <s> </s> <unk> as text", "\\u00e9 escaped in text, \"quotes\" and 'apostrophes'",
    ]


def iter_documents(seed: int = 1227) -> Iterator[str]:
    files = _files()
    random.Random(seed).shuffle(files)
    yield from extra_documents()
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text


def build_mixed_corpus(path: str | Path, target_bytes: int = 100 << 20, seed: int = 1227) -> Path:
    """Write the corpus as JSONL (field "text") until it holds `target_bytes`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    size = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for text in iter_documents(seed):
            line = json.dumps({"text": text, "id": size}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            if size >= target_bytes:
                break
    if size < target_bytes:
        tmp.unlink()
        raise RuntimeError(f"only {size} bytes of text found on this machine, {target_bytes} asked")
    os.replace(tmp, path)
    return path


def train_llama_style_spm(paths, out: str | Path, vocab_size: int = 32000, max_sentences: int = 300_000,
                          seed: int = 1227) -> Path:
    """A sentencepiece BPE model with LLaMA-2's trainer settings, trained on a seeded sample of lines."""
    import io

    import sentencepiece as spm

    from megatron_moe.data.spm_train import _sample, iter_texts

    def lines():  # leading whitespace kept: indentation pieces are learned as in LLaMA's vocabulary
        for text in iter_texts(paths):
            for line in text.splitlines():
                if line.strip():
                    yield line.rstrip()[:4192]

    lines = _sample(lines(), max_sentences, seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.99995, max_sentencepiece_length=16,
        input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=4192 * 4,
        num_threads=max(1, min(4, os.cpu_count() or 1)), minloglevel=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())
    return out
