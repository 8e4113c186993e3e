"""Sequence packing boundaries, the seeded train/valid split, and per-epoch reshuffling."""
import numpy as np
import pytest

from megatron_moe.data.dataset import DomainDataset
from megatron_moe.data.presets import DataError

from _data_helpers import numbered_docs, write_indexed


def flat(ds, order):
    return np.concatenate([ds.get(int(d)) for d in order]).astype(np.int64)


def test_samples_are_consecutive_windows_of_the_shuffled_stream(tmp_path):
    docs = numbered_docs(40, base=1000)
    prefix = write_indexed(tmp_path / "a", docs)
    S = 7
    ds = DomainDataset("a", [prefix], seq_len=S, valid_fraction=0.0, seed=3)
    total = sum(map(len, docs))
    assert ds.train.samples_per_epoch == (total - 1) // S
    order0 = ds.train.order_for_epoch(0)
    assert sorted(order0.tolist()) == list(range(40)) and order0.tolist() != list(range(40))
    stream = flat(ds, order0)
    # documents are whole and start with BOS in the stream
    assert stream[0] == 1 and (stream == 1).sum() == 40
    for k in range(ds.train.samples_per_epoch):
        got = ds.train.sample(k)
        assert got.shape == (S + 1,) and got.dtype == np.int64
        assert got.tolist() == stream[k * S:k * S + S + 1].tolist(), k
    # next epoch: a different permutation of the same documents, addressed by global sample index
    n = ds.train.samples_per_epoch
    order1 = ds.train.order_for_epoch(1)
    assert sorted(order1.tolist()) == list(range(40)) and order1.tolist() != order0.tolist()
    assert ds.train.sample(n + 2).tolist() == flat(ds, order1)[2 * S:3 * S + 1].tolist()


def test_sample_spanning_many_documents_and_multiple_prefixes(tmp_path):
    a = write_indexed(tmp_path / "a", [[1, 11], [1, 21, 22], [1]])
    b = write_indexed(tmp_path / "b", [[1, 31, 32, 33, 34, 35, 36]])
    ds = DomainDataset("x", [a, b], seq_len=5, valid_fraction=0.0, seed=0)
    assert ds.get(3).tolist() == [1, 31, 32, 33, 34, 35, 36]
    order = ds.train.order_for_epoch(0)
    stream = flat(ds, order)
    assert len(stream) == 13 and ds.train.samples_per_epoch == 2  # (13 - 1) // 5; the tail is dropped
    assert ds.train.sample(0).tolist() == stream[0:6].tolist()
    assert ds.train.sample(1).tolist() == stream[5:11].tolist()  # shares one boundary token with sample 0


def test_split_is_seeded_disjoint_and_sized(tmp_path):
    prefix = write_indexed(tmp_path / "a", numbered_docs(200, base=0))
    d1 = DomainDataset("a", [prefix], 8, valid_fraction=0.1, seed=5)
    d2 = DomainDataset("a", [prefix], 8, valid_fraction=0.1, seed=5)
    d3 = DomainDataset("a", [prefix], 8, valid_fraction=0.1, seed=6)
    assert len(d1.valid_docs) == 20 and len(d1.train_docs) == 180
    assert set(d1.valid_docs) | set(d1.train_docs) == set(range(200))
    assert not set(d1.valid_docs) & set(d1.train_docs)
    assert d1.valid_docs.tolist() == d2.valid_docs.tolist() != d3.valid_docs.tolist()
    assert d1.valid_docs.tolist() != list(range(20))  # shuffled, not a contiguous head
    # the validation stream is the valid documents in order; samples never touch training documents
    v = d1.valid.sample(0)
    doc_of = {t for t in v.tolist() if t != 1}
    allowed = {t for d in d1.valid_docs for t in d1.get(int(d)).tolist() if t != 1}
    assert doc_of <= allowed
    # a tiny fraction still holds out one document
    assert len(DomainDataset("a", [prefix], 8, valid_fraction=0.001, seed=5).valid_docs) == 1


def test_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.idx does not exist"):
        DomainDataset("m", [str(tmp_path / "missing")], 8, 0.0, 0)
    small = write_indexed(tmp_path / "s", [[1, 2, 3]])
    with pytest.raises(DataError, match=r"domain s: its training split has 3 tokens, fewer than seq_len\+1=9"):
        DomainDataset("s", [small], 8, 0.0, 0)
