"""A small real two-domain corpus that exists on any machine with Python (no download), for demos and tests.

- "code":  the Python standard library's top-level `.py` sources (sorted by name, files over 64 KB skipped).
- "prose": the `pydoc_data.topics` help texts, then module docstrings of the standard library.

    paths = build_demo_corpus("demo_out/corpus", max_docs_per_domain=300)     # {domain: jsonl path}
    demo = prepare_demo_data("demo_out")   # corpus + sentencepiece tokenizer (vocab 512) + indexed datasets
    demo["tokenizer"], demo["prefixes"]    # {"code": ".../code_text_document", "prose": ...}
"""
from __future__ import annotations

import ast
import json
import logging
import os
import sysconfig
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

DEMO_DOMAINS = ("code", "prose")


def _stdlib_sources(max_bytes: int = 64_000) -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file() and p.stat().st_size <= max_bytes)
    if not files:
        raise FileNotFoundError(f"no Python standard library sources found under {stdlib}")
    return files


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _prose_texts(sources: list[Path]) -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
        for key in sorted(topics):
            if topics[key].strip():
                yield topics[key]
    except ImportError:  # some distributions strip pydoc_data; docstrings still exist
        log.warning("pydoc_data is not available; the prose domain uses module docstrings only")
    for path in sources:
        try:
            doc = ast.get_docstring(ast.parse(_read(path)))
        except (SyntaxError, ValueError):
            continue
        if doc and len(doc) >= 200:
            yield doc


def _write_jsonl(path: Path, texts: Iterator[str], limit: int) -> int:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for text in texts:
            if count >= limit:
                break
            f.write(json.dumps({"text": text}) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def build_demo_corpus(out_dir: str | Path, max_docs_per_domain: int = 300) -> dict[str, Path]:
    """Write code.jsonl and prose.jsonl (field "text") under out_dir; returns {domain: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = _stdlib_sources()
    paths = {"code": out / "code.jsonl", "prose": out / "prose.jsonl"}
    n_code = _write_jsonl(paths["code"], (_read(p) for p in sources), max_docs_per_domain)
    n_prose = _write_jsonl(paths["prose"], _prose_texts(sources), max_docs_per_domain)
    log.info("demo corpus in %s: %d code documents, %d prose documents", out, n_code, n_prose)
    return paths


def prepare_demo_data(out_dir: str | Path, max_docs_per_domain: int = 300, vocab_size: int = 512,
                      workers: int = 1, progress: bool = False) -> dict:
    """Corpus, a sentencepiece tokenizer trained on it, and one indexed dataset per domain under out_dir.

    Returns {"tokenizer": path, "corpus": {domain: jsonl}, "prefixes": {domain: prefix}, "stats": {...}}.
    """
    from megatron_moe.data.preprocess import preprocess_files
    from megatron_moe.data.spm_train import train_sentencepiece_from_files

    out = Path(out_dir)
    corpus = build_demo_corpus(out / "corpus", max_docs_per_domain)
    tokenizer = train_sentencepiece_from_files(list(corpus.values()), out / "tokenizer.model",
                                               vocab_size=vocab_size, max_sentences=50_000)
    prefixes, stats = {}, {}
    for domain, path in corpus.items():
        prefix = out / "data" / f"{domain}_text_document"
        stats[domain] = preprocess_files([path], tokenizer, prefix, workers=workers, progress=progress)
        prefixes[domain] = str(prefix)
    return {"tokenizer": str(tokenizer), "corpus": {k: str(v) for k, v in corpus.items()},
            "prefixes": prefixes, "stats": stats}
