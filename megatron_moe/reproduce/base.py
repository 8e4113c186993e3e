"""The trained dense base of the reproduction, built here from local text and cached by content hash:

  corpus-<h>/     code.jsonl, docstrings.jsonl, docs.jsonl (data/local_corpus.py)        h: budget + seed
  tokenizer-<h>/  tokenizer.model (sentencepiece, budget.vocab pieces)                    h: corpus files
  data-<h>/       <domain>_text_document.{bin,idx} (megatron indexed datasets)           h: corpus + tokenizer
  dense-<h>/      a dense LLaMA pretrained from scratch with our trainer (run dir)       h: data + model + schedule

Every stage directory is complete or absent (written under a temporary name). Also: the unigram baseline, per
domain (add-1/2 smoothed counts of the domain's training tokens, scored on its validation labels).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import AtomicDir
from ..config import Config, DataConfig, DomainConfig, ModelConfig, MoEConfig, TrainConfig
from ..data.local_corpus import LOCAL_DOMAINS, build_local_corpus
from .budget import Budget
from .cache import digest, file_digest, stage

log = logging.getLogger(__name__)


@dataclass
class Base:
    root: Path
    tokenizer: Path
    prefixes: dict          # domain -> dataset prefix
    run_dir: Path           # the dense run (checkpoints/latest is the base model)
    key: str                # content hash of everything the base depends on
    seconds: float          # pretraining wall time (0 when reused)


def _build(path: Path, fill) -> Path:
    """Run fill(tmp_dir) into an AtomicDir unless `path` exists (a cached stage)."""
    if path.exists():
        log.info("reusing %s", path)
        return path
    with AtomicDir(path) as tmp:
        fill(tmp)
    return path


def model_config(b: Budget, vocab: int) -> ModelConfig:
    return ModelConfig(hidden_size=b.hidden, intermediate_size=b.ffn, num_layers=b.layers, num_heads=b.heads,
                       num_kv_heads=b.heads, vocab_size=vocab, max_seq_len=b.seq_len, rope_theta=10000.0,
                       bos_token_id=1, eos_token_id=2)


def data_config(b: Budget, prefixes: dict, weights: dict) -> DataConfig:
    return DataConfig(domains=[DomainConfig(name=d, prefixes=[prefixes[d]], weight=weights[d]) for d in LOCAL_DOMAINS],
                      seq_len=b.seq_len, valid_fraction=b.valid_fraction, seed=b.seed)


def run_config(b: Budget, model: ModelConfig, data: DataConfig, run_dir: Path, steps: int, lr: float,
               warmup: int, moe: MoEConfig = MoEConfig()) -> Config:
    cfg = Config(model=model, moe=moe, data=data,
                 train=TrainConfig(micro_batch_size=b.batch, global_batch_size=b.batch, train_steps=steps, lr=lr,
                                   warmup_steps=warmup, min_lr_ratio=0.1, weight_decay=0.1, clip_grad=1.0,
                                   seed=b.seed, precision="fp32", eval_interval=0, log_interval=max(1, steps // 50)))
    cfg.logging.run_dir, cfg.logging.tensorboard = str(run_dir), False
    cfg.checkpoint.save_optimizer = False
    return cfg


def domain_tokens(prefixes: dict) -> dict:
    """Tokens per domain (the static sampling weights: domains in proportion to their size)."""
    from ..data.indexed import open_indexed

    out = {}
    for d, p in prefixes.items():
        ds = open_indexed(p)  # keep it alive: its __del__ closes the memory map the lengths live in
        out[d] = int(ds.sequence_lengths.sum())
        del ds
    return out


def train_one_process(cfg: Config) -> float:
    """Check and run `cfg` to its end in this process (no process group); returns the training's seconds."""
    import time

    from ..parallel import ParallelState
    from ..training import build_trainer, preflight

    preflight(cfg, 1)
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, ParallelState())
    trainer.train()
    trainer.close()
    return time.perf_counter() - t0


def build_base(out: Path, b: Budget, progress: bool = False) -> Base:
    """Corpus, tokenizer, datasets and the pretrained dense model (each reused when already built)."""
    from ..data.preprocess import preprocess_files
    from ..data.spm_train import train_sentencepiece_from_files

    out = Path(out)
    ckey = digest(b.corpus_bytes, b.seed)
    corpus = _build(stage(out, "corpus", ckey), lambda tmp: build_local_corpus(tmp, b.corpus_bytes, b.seed))
    files = [corpus / f"{d}.jsonl" for d in LOCAL_DOMAINS]
    tkey = digest(file_digest(*files), b.vocab)
    tok_dir = _build(stage(out, "tokenizer", tkey), lambda tmp: train_sentencepiece_from_files(
        files, tmp / "tokenizer.model", vocab_size=b.vocab, max_sentences=200_000, seed=b.seed))
    tokenizer = tok_dir / "tokenizer.model"
    dkey = digest(tkey, file_digest(tokenizer))

    def tokenize(tmp: Path) -> None:
        for d in LOCAL_DOMAINS:
            preprocess_files([corpus / f"{d}.jsonl"], tokenizer, tmp / f"{d}_text_document", workers=1,
                             progress=progress)
    data_dir = _build(stage(out, "data", dkey), tokenize)
    prefixes = {d: str(data_dir / f"{d}_text_document") for d in LOCAL_DOMAINS}
    weights = domain_tokens(prefixes)  # sample domains in proportion to their size
    model = model_config(b, b.vocab)
    key = digest(dkey, model.__dict__, b.pretrain_steps, b.pretrain_lr, b.batch, b.seq_len, b.seed)
    run_dir = stage(out, "dense", key)
    seconds = 0.0
    if not (run_dir / "checkpoints" / "latest").is_file():
        cfg = run_config(b, model, data_config(b, prefixes, weights), run_dir, b.pretrain_steps, b.pretrain_lr,
                         warmup=max(1, b.pretrain_steps // 20))
        seconds = train_one_process(cfg)
    return Base(out, tokenizer, prefixes, run_dir, key, seconds)


def unigram_losses(base: Base, b: Budget) -> dict[str, float]:
    """Per-domain cross-entropy (nats/token) of a unigram model of the domain's training tokens on its
    validation labels (the same validation sequences every model is scored on)."""
    from ..data import MultiDomainData

    data = MultiDomainData(data_config(b, base.prefixes, {d: 1.0 for d in LOCAL_DOMAINS}), b.batch)
    out = {}
    for dom in data.domains:
        counts = np.zeros(b.vocab, dtype=np.float64)
        for doc in dom.train_docs:
            counts += np.bincount(dom.get(int(doc)), minlength=b.vocab)[:b.vocab]
        logp = np.log((counts + 0.5) / (counts.sum() + 0.5 * b.vocab))
        n = min(b.eval_sequences, dom.valid.samples_per_epoch)
        labels = np.concatenate([dom.valid.sample(k)[1:] for k in range(n)])
        out[dom.name] = float(-logp[labels].mean())
    return out


def valid_losses(model: torch.nn.Module, base: Base, b: Budget) -> dict[str, float]:
    """Per-domain mean next-token loss on min(eval_sequences, available) validation sequences per domain."""
    from ..data import MultiDomainData
    from ..parallel import ParallelState
    from ..training.validation import validate

    data = MultiDomainData(data_config(b, base.prefixes, {d: 1.0 for d in LOCAL_DOMAINS}), b.batch)
    out = {}
    for dom in data.domains:
        n = min(b.eval_sequences, dom.valid.samples_per_epoch)
        bs = min(b.batch, n)
        out.update({k: v for k, v in validate(model, _OneDomain(data, dom.name), ParallelState(), bs, n // bs).items()})
    return out


class _OneDomain:
    """A view of MultiDomainData with one domain (validate() loops over data.domain_names)."""

    def __init__(self, data, name: str):
        self._data, self.domain_names = data, [name]

    def valid_batches(self, *args, **kw):
        return self._data.valid_batches(*args, **kw)


def ppl(loss: float) -> float:
    return math.exp(min(loss, 80.0))
