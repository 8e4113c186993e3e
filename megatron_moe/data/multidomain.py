"""The trainer's view of the data: multi-domain, packed, globally sampled, sliced per data-parallel rank.

    data = MultiDomainData(cfg.data, global_batch_size, dp_rank, dp_size)   # opens/splits/packs domains
    batch = data.next_step()                # this rank's share of the next global batch (see RankBatch)
    for tokens_BS1, domain_B in batch.micro_batches(micro_batch_size):
        inputs, labels = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
    for tokens_BS1 in data.valid_batches("c4", num_batches, batch_size):   # this rank's slice of each
        ...                                                                 # global validation batch
    data.update_weights({"c4": 2.1, ...})   # dynamic sampling (all ranks must pass the same losses)
    data.weights                            # {domain: weight}
    state = data.state_dict()               # small JSON-serialisable dict; load_state_dict(state) resumes

Layout independence: the global batch of step s (domains and samples of all G sequences) depends only on
data.seed, s, the weights and the per-domain counters, never on dp_size. Rank r of dp gets the contiguous
sequences [r*n, (r+1)*n) with n = G / dp, so 1 process and 2 processes train on the same global batch.

Validation: `valid_batches(domain, num_batches, batch_size)` reads the domain's validation samples in a fixed
order (wrapping if there are fewer than num_batches * batch_size); batch b holds global sequences
[b*batch_size, (b+1)*batch_size) and, with `sliced=True` (default), each rank gets its contiguous
batch_size / dp share, so a sum of per-token losses all-reduced over DP is layout independent.
With `sliced=False` every rank gets the whole batch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional

import numpy as np
import torch

from megatron_moe.config import DataConfig
from megatron_moe.data.dataset import DomainDataset
from megatron_moe.data.indexed import check_batch
from megatron_moe.data.presets import DataError, resolve_ref_losses, resolve_weights
from megatron_moe.data.sampler import DomainSampler, paper_update, sheared_update

log = logging.getLogger(__name__)


@dataclass
class RankBatch:
    """This rank's share of one global batch: n = global_batch_size / dp sequences of seq_len + 1 tokens."""

    step: int
    """Optimizer step (0-based) the batch belongs to."""
    tokens: torch.Tensor
    """LongTensor [n, seq_len + 1]; inputs = tokens[:, :-1], labels = tokens[:, 1:]."""
    domain_ids: torch.Tensor
    """LongTensor [n]: index into MultiDomainData.domain_names of each sequence."""
    global_domain_counts: dict
    """{domain: sequences of the whole global batch drawn from it} (for logging)."""
    first_sample: int = 0
    """Position of this rank's first sequence in the global batch (sequence i is global sample first_sample + i)."""

    def micro_batches(self, micro_batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens [B, seq_len + 1], domain_ids [B]) in order, B = micro_batch_size."""
        n = self.tokens.shape[0]
        if micro_batch_size < 1 or n % micro_batch_size:
            raise DataError(f"micro_batch_size={micro_batch_size} does not divide the {n} sequences per rank")
        for i in range(0, n, micro_batch_size):
            yield self.tokens[i:i + micro_batch_size], self.domain_ids[i:i + micro_batch_size]


class MultiDomainData:
    """Datasets of all configured domains plus the global domain sampler; see the module docstring."""

    def __init__(self, cfg: DataConfig, global_batch_size: int, dp_rank: int = 0, dp_size: int = 1,
                 vocab_size: Optional[int] = None):
        cfg.validate()
        self.vocab_size = vocab_size  # when given, every batch is checked against it (data.indexed.check_batch)
        if not cfg.domains:
            raise DataError("data.domains is empty; configure at least one domain with its dataset prefixes")
        if dp_size < 1 or not 0 <= dp_rank < dp_size or global_batch_size % dp_size:
            raise DataError(f"global_batch_size={global_batch_size} must split evenly over dp_size={dp_size} "
                            f"(dp_rank={dp_rank})")
        self.cfg = cfg
        self.seq_len = cfg.seq_len
        self.global_batch_size, self.dp_rank, self.dp_size = global_batch_size, dp_rank, dp_size
        self.domain_names = [d.name for d in cfg.domains]
        weights = resolve_weights(cfg)
        self.ref_losses = resolve_ref_losses(cfg) if cfg.sampling == "dynamic" else None
        self.domains = [DomainDataset(d.name, d.prefixes, cfg.seq_len, cfg.valid_fraction, cfg.seed)
                        for d in cfg.domains]
        self.sampler = DomainSampler(self.domain_names, weights, cfg.seed, global_batch_size)
        log.info("data: %s sampling, weights %s", cfg.sampling, self._fmt(self.sampler.weights))

    def _fmt(self, w: np.ndarray) -> str:
        return ", ".join(f"{n}={x:.4f}" for n, x in zip(self.domain_names, w))

    # ------------------------------------------------------------------------------------ training
    @property
    def step(self) -> int:
        """Number of global batches drawn so far (the next batch's step)."""
        return self.sampler.step

    @property
    def weights(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.domain_names, self.sampler.weights)}

    @property
    def samples_per_epoch(self) -> dict[str, int]:
        return {d.name: d.train.samples_per_epoch for d in self.domains}

    @property
    def epochs(self) -> dict[str, int]:
        """Current training epoch of each domain (0-based; > 0 once the domain has wrapped around)."""
        return {d.name: int(c) // d.train.samples_per_epoch for d, c in zip(self.domains, self.sampler.consumed)}

    def next_step(self) -> RankBatch:
        """Draw the next global batch and return this rank's contiguous slice of it."""
        step = self.sampler.step
        domain_G, index_G = self.sampler.next_plan()
        n = self.global_batch_size // self.dp_size
        lo = self.dp_rank * n
        rows = [self.domains[d].train.sample(k) for d, k in zip(domain_G[lo:lo + n], index_G[lo:lo + n])]
        tokens = np.stack(rows)
        if self.vocab_size is not None:
            check_batch(tokens, self.vocab_size, f"training batch of step {step + 1} (domains "
                        f"{sorted({self.domain_names[d] for d in domain_G[lo:lo + n]})})")
        counts = np.bincount(domain_G, minlength=len(self.domains))
        return RankBatch(step=step, tokens=torch.from_numpy(tokens),
                         domain_ids=torch.from_numpy(domain_G[lo:lo + n].copy()),
                         global_domain_counts={n_: int(c) for n_, c in zip(self.domain_names, counts)},
                         first_sample=lo)

    # ---------------------------------------------------------------------------------- validation
    def valid_batches(self, domain: str, num_batches: int, batch_size: int,
                      sliced: bool = True) -> Iterator[torch.Tensor]:
        """Validation batches of `domain` as LongTensor [B, seq_len + 1]; see the module docstring."""
        split = self._domain(domain).valid
        if split.samples_per_epoch == 0:
            raise DataError(f"domain {domain} has no validation samples ({split.tokens} tokens in "
                            f"{len(split.doc_ids)} documents, seq_len={self.seq_len}); raise data.valid_fraction")
        if sliced and batch_size % self.dp_size:
            raise DataError(f"validation batch_size={batch_size} is not divisible by dp_size={self.dp_size}")
        total = num_batches * batch_size
        if total > split.samples_per_epoch:
            log.warning("domain %s: %d validation sequences asked, %d available; repeating them", domain,
                        total, split.samples_per_epoch)
        n = batch_size // self.dp_size if sliced else batch_size
        lo = self.dp_rank * n if sliced else 0
        for b in range(num_batches):
            ks = [(b * batch_size + lo + i) % split.samples_per_epoch for i in range(n)]
            tokens = np.stack([split.sample(k) for k in ks])
            if self.vocab_size is not None:
                check_batch(tokens, self.vocab_size, f"validation batch of domain {domain}")
            yield torch.from_numpy(tokens)

    def _domain(self, name: str) -> DomainDataset:
        if name not in self.domain_names:
            raise DataError(f"unknown domain {name!r}; configured: {', '.join(self.domain_names)}")
        return self.domains[self.domain_names.index(name)]

    # ------------------------------------------------------------------------------------- weights
    def update_weights(self, losses: Mapping[str, float]) -> dict[str, float]:
        """Dynamic sampling: new weights from per-domain validation losses (no-op for static). Returns weights."""
        if self.cfg.sampling != "dynamic":
            return self.weights
        missing = [n for n in self.domain_names if n not in losses]
        if missing:
            raise DataError(f"update_weights needs a validation loss for every domain; missing {', '.join(missing)}")
        L = np.array([float(losses[n]) for n in self.domain_names])
        if not np.isfinite(L).all():
            log.warning("non-finite validation losses %s; keeping weights", dict(losses))
            return self.weights
        old = self.sampler.weights
        if self.cfg.dynamic_variant == "sheared":
            new = sheared_update(old, L, self.ref_losses, self.cfg.dynamic_eta, self.cfg.dynamic_smoothing)
        else:
            new = paper_update(old, L, self.ref_losses, self.cfg.dynamic_eta)
        self.sampler.set_weights(new)
        log.info("data: step %d dynamic (%s) weights %s", self.step, self.cfg.dynamic_variant, self._fmt(new))
        return self.weights

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Small JSON-serialisable state: sampler step, per-domain counters and epochs, weights."""
        return {"version": 1, **self.sampler.state_dict(), "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != 1:
            raise DataError(f"data state version {state.get('version')!r} is not supported (expected 1)")
        self.sampler.load_state_dict(state)
        log.info("data: resumed at step %d, epochs %s", self.step, self.epochs)
