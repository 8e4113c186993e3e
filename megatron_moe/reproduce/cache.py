"""Stages cached by content hash: a stage directory is named after a hash of everything it depends on (inputs'
hashes, options), is written under a temporary name and renamed when complete (megatron_moe.atomic), and is
reused when it exists, so a rerun with the same budget reuses the corpus, tokenizer, datasets and dense base."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def digest(*parts) -> str:
    """12 hex digits of sha256 over the JSON of `parts` (dicts sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def stage(root: Path, name: str, key: str) -> Path:
    return Path(root) / f"{name}-{key}"
