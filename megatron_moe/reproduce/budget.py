"""Sizes of the reproduction: `quick` (CI, a few minutes) and `full` (the documented run, under an hour on 2 CPU
cores). Both run the same code; only the numbers differ."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Budget:
    name: str
    corpus_bytes: dict = field(default_factory=dict)
    """Byte budget per domain of the local corpus (data/local_corpus.py)."""
    vocab: int = 4096
    """sentencepiece pieces."""
    hidden: int = 192
    layers: int = 4
    heads: int = 4
    ffn: int = 768
    """Dense FFN width (split into `experts`)."""
    seq_len: int = 256
    batch: int = 16
    """Sequences per optimizer step (one micro-batch)."""
    pretrain_steps: int = 1100
    pretrain_lr: float = 3e-3
    cpt_steps: int = 64
    cpt_lr: float = 1e-3
    experts: int = 8
    top_k: int = 2
    eval_sequences: int = 128
    """Validation sequences per domain (all of them when fewer)."""
    calib_tokens: int = 32768
    valid_fraction: float = 0.02
    seed: int = 1227

    def as_dict(self) -> dict:
        return asdict(self)


QUICK = Budget(name="quick", corpus_bytes={"code": 300_000, "docstrings": 150_000, "docs": 150_000}, vocab=512,
               hidden=64, layers=2, heads=4, ffn=128, seq_len=64, batch=8, pretrain_steps=500, pretrain_lr=5e-3,
               cpt_steps=32, cpt_lr=2.5e-4, eval_sequences=16, calib_tokens=1024, valid_fraction=0.05)
FULL = Budget(name="full", corpus_bytes={"code": 8_000_000, "docstrings": 4_000_000, "docs": 4_000_000},
              pretrain_steps=1500, cpt_steps=128, cpt_lr=6e-4)
BUDGETS = {"quick": QUICK, "full": FULL}
