"""Real text that exists on any machine with Python (no download): corpora for the demo and the reproduction.

Demo (two domains, small):
- "code":  the Python standard library's top-level `.py` sources (sorted by name, files over 64 KB skipped).
- "prose": the `pydoc_data.topics` help texts, then module docstrings of the standard library.

    paths = build_demo_corpus("demo_out/corpus", max_docs_per_domain=300)     # {domain: jsonl path}
    demo = prepare_demo_data("demo_out")   # corpus + sentencepiece tokenizer (vocab 512) + indexed datasets

Reproduction (three domains, `build_local_corpus`; docs/reproduction.md), from the standard library first and,
only for budgets larger than it, a fixed list of installed distributions (CORPUS_DISTRIBUTIONS: core
dependencies of this project), every document deduplicated by content. The quick budget (CI) comes from the
standard library alone, so it depends on the Python version only: taking a seeded sample of the standard library
and the distributions together made the quick test's losses move with every upgrade (the upgrade canary's torch
2.14.1 made the dense base 1 nat worse), and adding an unrelated dependency moved them too (lm-eval):
- "code":        `.py` sources of 500 B - 64 KB: the standard library's in a seeded order, then the distributions';
- "docstrings":  module, class and function docstrings of at least 200 characters from those sources, in that order;
- "docs":        the `pydoc_data.topics` help texts, then the distributions' long descriptions
                 (`*.dist-info/METADATA` bodies) and the `.md`/`.rst` files shipped inside them.
Each domain stops at `max_bytes`.

Mixed (one file, `build_mixed_corpus`; the preprocessing benchmark and the tokenizer equivalence tests): short
documents that stress tokenizers (`EDGE_CASE_DOCUMENTS`: whitespace runs, mixed scripts, emoji, control
characters), then whole `.py`, `.rst`, `.txt` and `.md` files of the standard library and of this interpreter's
site-packages (the venv built from requirements/*.lock, so the same lock gives the same files), in a seeded order
of the sorted file list, up to a byte budget of JSONL.
"""
from __future__ import annotations

import ast
import json
import logging
import sysconfig
from pathlib import Path

from ..atomic import atomic_file
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
    count = 0
    with atomic_file(path) as f:
        for text in texts:
            if count >= limit:
                break
            f.write(json.dumps({"text": text}) + "\n")
            count += 1
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


LOCAL_DOMAINS = ("code", "docstrings", "docs")


CORPUS_DISTRIBUTIONS = ("numpy", "torch", "transformers", "tokenizers", "sympy", "networkx", "jinja2", "PyYAML",
                        "scikit-learn", "scipy", "matplotlib", "tqdm", "safetensors", "sentencepiece",
                        "megatron-core", "pandas", "pyarrow", "datasets", "tensorboard", "wandb", "pydantic",
                        "fonttools", "regex", "huggingface_hub")
"""The installed distributions whose files the reproduction corpus may use (whichever of them are installed)."""


def _distribution_files() -> list[Path]:
    """Files of CORPUS_DISTRIBUTIONS, as their RECORDs list them."""
    import importlib.metadata as md

    out = []
    for name in CORPUS_DISTRIBUTIONS:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        out += [Path(dist.locate_file(f)) for f in dist.files or () if ".." not in Path(str(f)).parts]
    return out


def _stdlib_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in stdlib.rglob("*") if "site-packages" not in p.relative_to(stdlib).parts]


def _python_files(min_bytes: int = 500, max_bytes: int = 64_000) -> tuple[list[Path], list[Path]]:
    """(.py files of the standard library, .py files of CORPUS_DISTRIBUTIONS not in the first list), each sorted."""
    def keep(p: Path) -> bool:
        return p.suffix == ".py" and p.is_file() and min_bytes <= p.stat().st_size <= max_bytes

    stdlib = {p for p in _stdlib_files() if keep(p)}
    return sorted(stdlib), sorted({p for p in _distribution_files() if keep(p)} - stdlib)


def _docstrings(path: Path, min_chars: int = 200) -> Iterator[str]:
    try:
        tree = ast.parse(_read(path))
    except (SyntaxError, ValueError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars:
                yield doc


def _doc_texts() -> Iterator[str]:
    """The interpreter's own help texts first (`pydoc_data.topics`), then the distributions' long descriptions and
    shipped Markdown/reST, for budgets larger than the help texts."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    for key in sorted(topics):
        if len(topics[key].strip()) >= 200:
            yield topics[key]
    files = sorted(set(_distribution_files()))
    for meta in (p for p in files if p.name == "METADATA" and p.parent.name.endswith(".dist-info")):
        body = _read(meta).split("\n\n", 1)  # RFC 822 headers, a blank line, then the long description
        if len(body) == 2 and len(body[1].strip()) >= 200:
            yield body[1]
    for p in files:
        if p.suffix in (".md", ".rst") and p.is_file() and p.stat().st_size >= 200:
            yield _read(p)


def _take(texts: Iterator[str], max_bytes: int, seen: set) -> list[str]:
    out, size = [], 0
    for text in texts:
        digest = hash(text)
        if digest in seen or not text.strip():
            continue
        seen.add(digest)
        out.append(text)
        size += len(text.encode("utf-8"))
        if size >= max_bytes:
            break
    return out


def build_local_corpus(out_dir: str | Path, max_bytes: dict[str, int], seed: int = 1227) -> dict[str, Path]:
    """Write code.jsonl, docstrings.jsonl and docs.jsonl (field "text") under out_dir; returns {domain: path}.
    `max_bytes`: {domain: byte budget}. Deterministic for a given Python installation and seed."""
    import random

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stdlib, dists = _python_files()
    if not stdlib and not dists:
        raise FileNotFoundError("no Python sources found under this interpreter's library directories")
    random.Random(seed).shuffle(stdlib)
    random.Random(seed + 1).shuffle(dists)
    files = stdlib + dists  # the standard library first: a budget it covers does not depend on installed packages
    seen: set = set()
    texts = {"code": _take((_read(p) for p in files), max_bytes["code"], seen),
             "docstrings": _take((d for p in files for d in _docstrings(p)), max_bytes["docstrings"], seen),
             "docs": _take(_doc_texts(), max_bytes["docs"], seen)}
    paths = {}
    for domain in LOCAL_DOMAINS:
        paths[domain] = out / f"{domain}.jsonl"
        _write_jsonl(paths[domain], iter(texts[domain]), len(texts[domain]))
        log.info("local corpus %s: %d documents, %.1f MB", domain, len(texts[domain]),
                 sum(len(t.encode()) for t in texts[domain]) / 1e6)
    return paths


EDGE_CASE_DOCUMENTS = [
    "    indented\n\t\ttabs\n\n\n\nblank lines   trailing   \n",
    " leading space", "  two leading spaces", "trailing space ", "x" + " " * 37 + "y",
    "Grüße aus Köln — naïve café, señor; Ελληνικά; русский текст; עברית; العربية",
    "日本語のテキストと中文文本，한국어 텍스트。", "emoji 🙂🚀👩‍👩‍👧 and flags 🇩🇪🇯🇵",
    "numbers 1234567890 3.14159 1e-10 0xdeadBEEF 2026-12-07", "\u00a0non-breaking\u2009thin\u3000ideographic",
    "zero\u200bwidth\u200djoiner\ufeffbom", "control \x00\x01\x02\x7f chars", "a\r\nwindows\r\nlines\r\n",
    "=" * 80, "-" * 33 + "+" + "-" * 17, "a" * 31 + "b", "ab" * 10 + "a",
    "▁ literal metaspace ▁▁ and <s> </s> <unk> as text", "\\u00e9 escaped in text, \"quotes\" and 'apostrophes'",
]
"""Short documents that exercise tokenizer edge cases."""


def _mixed_files(max_bytes: int = 512_000) -> list[Path]:
    stdlib, purelib = Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])
    out = []
    for root in (stdlib, purelib):
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).parts
            if root == stdlib and rel and rel[0] == "site-packages":
                continue
            if p.suffix in (".py", ".rst", ".txt", ".md") and p.is_file() and 0 < p.stat().st_size <= max_bytes:
                out.append(p)
    return out


def iter_mixed_documents(seed: int = 1227) -> Iterator[str]:
    """EDGE_CASE_DOCUMENTS, then the mixed corpus's files (see the module doc)."""
    import random

    files = _mixed_files()
    random.Random(seed).shuffle(files)
    yield from EDGE_CASE_DOCUMENTS
    for p in files:
        text = _read(p)
        if text.strip():
            yield text


def build_mixed_corpus(path: str | Path, target_bytes: int, seed: int = 1227) -> Path:
    """Write the mixed corpus as JSONL (fields "text", "id") until it holds `target_bytes`; returns the path.
    Raises FileNotFoundError when this machine has less text than that."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with atomic_file(path) as f:
        for i, text in enumerate(iter_mixed_documents(seed)):
            line = json.dumps({"text": text, "id": i}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            if size >= target_bytes:
                break
        if size < target_bytes:  # raised inside the block: nothing is written
            raise FileNotFoundError(f"only {size} bytes of text found on this machine, {target_bytes} asked")
    return path
