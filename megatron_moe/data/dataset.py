"""One domain's tokens: megatron-core indexed datasets, a seeded train/valid split, and sequence packing.

Documents (each starting with BOS) of the training split are shuffled per epoch, concatenated and cut into
samples of seq_len + 1 tokens with megatron-core's C++ `build_sample_idx` (the GPTDataset layout: sample i
covers flat tokens [i*seq_len, (i+1)*seq_len], so consecutive samples share one boundary token and every
token is a label exactly once; inputs = s[:-1], labels = s[1:]). The partial last sample of an epoch is
dropped. Epoch e's document order is a permutation seeded by (seed, domain name, e), so an exhausted domain
continues with a new shuffle and any sample is addressable by its global index k (epoch k // n, slot k % n).

The split is by document: a permutation seeded by (seed, domain name) puts round(valid_fraction * N)
documents (at least 1 when valid_fraction > 0 and N > 1) in validation. Validation documents are packed
once, in document order. Multiple prefixes of a domain are concatenated as one document list.

We do not use GPTDataset / BlendedDataset themselves: they need the number of samples up front and a
tokenizer object, and split by contiguous document ranges; domain sampling here is open-ended and dynamic.
"""
from __future__ import annotations

import logging
import zlib
from typing import Optional, Sequence

import numpy as np

from megatron_moe.data._mcore import mcore_helpers
from megatron_moe.data.indexed import open_indexed  # noqa: F401  (re-exported)
from megatron_moe.data.presets import DataError

log = logging.getLogger(__name__)

_SPLIT_STREAM = 0x5EED5
_EPOCH_STREAM = 0xE90C


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class PackedSplit:
    """Packed samples over a list of document ids; `order_for_epoch(e)` gives each epoch's document order."""

    def __init__(self, domain: "DomainDataset", doc_ids: np.ndarray, seq_len: int, shuffle: bool, seed: int):
        self.domain, self.doc_ids, self.seq_len, self.shuffle, self.seed = domain, doc_ids, seq_len, shuffle, seed
        self.tokens = int(domain.sizes[doc_ids].sum()) if len(doc_ids) else 0
        self.samples_per_epoch = max(0, (self.tokens - 1) // seq_len)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def order_for_epoch(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.doc_ids
        rng = np.random.default_rng([self.seed, _name_key(self.domain.name), _EPOCH_STREAM, epoch])
        return self.doc_ids[rng.permutation(len(self.doc_ids))]

    def _index(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._cache:
            if self.shuffle and epoch > 0:
                log.info("domain %s: training data exhausted, starting epoch %d with a new shuffle",
                         self.domain.name, epoch)
            order = self.order_for_epoch(epoch).astype(np.int32)
            sample_idx = mcore_helpers.build_sample_idx(self.domain.sizes, order, self.seq_len, 1, self.tokens,
                                                        True, True)
            assert len(sample_idx) - 1 == self.samples_per_epoch, (
                f"domain {self.domain.name}: packing gave {len(sample_idx) - 1} samples, "
                f"expected {self.samples_per_epoch}")
            if len(self._cache) >= 2:  # consecutive epochs can meet inside one global batch
                self._cache.pop(min(self._cache))
            self._cache[epoch] = (order, sample_idx)
        return self._cache[epoch]

    def sample(self, k: int) -> np.ndarray:
        """Tokens [seq_len + 1] of sample k (counting across epochs), as int64."""
        if self.samples_per_epoch == 0:
            raise DataError(f"domain {self.domain.name}: {self.tokens} tokens cannot fill one sample of "
                            f"seq_len+1={self.seq_len + 1} tokens")
        epoch, slot = divmod(int(k), self.samples_per_epoch)
        order, sample_idx = self._index(epoch)
        (i0, off0), (i1, off1) = sample_idx[slot], sample_idx[slot + 1]
        if i0 == i1:
            parts = [self.domain.get(order[i0], int(off0), int(off1 - off0 + 1))]
        else:
            parts = [self.domain.get(order[i0], int(off0))]
            parts += [self.domain.get(order[i]) for i in range(i0 + 1, i1)]
            parts.append(self.domain.get(order[i1], 0, int(off1 + 1)))
        out = np.concatenate(parts).astype(np.int64)
        assert out.size == self.seq_len + 1, f"sample {k} of {self.domain.name} has {out.size} tokens"
        return out


class DomainDataset:
    """A domain's indexed datasets with its train split (shuffled per epoch) and valid split (fixed)."""

    def __init__(self, name: str, prefixes: Sequence[str], seq_len: int, valid_fraction: float, seed: int):
        if not prefixes:
            raise DataError(f"domain {name} has no dataset prefixes")
        self.name = name
        self.datasets = [open_indexed(str(p)) for p in prefixes]
        self.sizes = np.concatenate([ds.sequence_lengths for ds in self.datasets]).astype(np.int32)
        self._starts = np.cumsum([0] + [len(ds) for ds in self.datasets])
        n = len(self.sizes)
        rng = np.random.default_rng([seed, _name_key(name), _SPLIT_STREAM])
        perm = rng.permutation(n)
        n_valid = int(round(valid_fraction * n))
        if valid_fraction > 0 and n > 1:
            n_valid = min(max(n_valid, 1), n - 1)
        self.valid_docs = np.sort(perm[:n_valid])
        self.train_docs = np.sort(perm[n_valid:])
        self.train = PackedSplit(self, self.train_docs, seq_len, shuffle=True, seed=seed)
        self.valid = PackedSplit(self, self.valid_docs, seq_len, shuffle=False, seed=seed)
        if self.train.samples_per_epoch == 0:
            raise DataError(f"domain {name}: its training split has {self.train.tokens} tokens, fewer than "
                            f"seq_len+1={seq_len + 1}; add data or lower data.seq_len")
        log.info("domain %s: %d documents (%d valid), %d train tokens -> %d samples/epoch of %d+1 tokens",
                 name, n, n_valid, self.train.tokens, self.train.samples_per_epoch, seq_len)

    def get(self, doc: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens of global document `doc` (across this domain's prefixes) from `offset`, `length` of them."""
        which = int(np.searchsorted(self._starts, doc, side="right") - 1)
        return self.datasets[which].get(int(doc - self._starts[which]), offset=offset, length=length)
