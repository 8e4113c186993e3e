"""Domain sampling: static frequencies, presets, dynamic rules, layout independence, wrap-around, resume."""
import json
import logging

import numpy as np
import pytest
import torch

from megatron_moe.config import ConfigError, DataConfig
from megatron_moe.data.multidomain import MultiDomainData
from megatron_moe.data.presets import DataError, preset_weights
from megatron_moe.data.sampler import DomainSampler, paper_update, sheared_update

from _data_helpers import numbered_docs, write_indexed


@pytest.fixture()
def three_domains(tmp_path):
    small = write_indexed(tmp_path / "small", numbered_docs(6, base=20000, min_len=4, max_len=6, seed=1))
    return [dict(name="cc", prefixes=[write_indexed(tmp_path / "cc", numbered_docs(300, base=0))]),
            dict(name="github", prefixes=[write_indexed(tmp_path / "gh", numbered_docs(300, base=40000))]),
            dict(name="book", prefixes=[small])]


def make(domains, gbs=8, rank=0, dp=1, **kw):
    cfg = DataConfig(domains=[dict(d) for d in domains], seq_len=kw.pop("seq_len", 8), valid_fraction=0.0,
                     seed=kw.pop("seed", 11), **kw)
    return MultiDomainData(cfg, gbs, rank, dp)


def test_static_frequencies_match_weights():
    w = np.array([0.5, 0.3, 0.2, 0.0])
    s = DomainSampler(["a", "b", "c", "d"], w, seed=1227, global_batch_size=64)
    counts = sum(np.bincount(s.next_plan()[0], minlength=4) for _ in range(200))
    n = counts.sum()
    assert n == 12800 and counts[3] == 0
    chi2 = (((counts[:3] - n * w[:3]) ** 2) / (n * w[:3])).sum()
    assert chi2 < 13.82, (counts, chi2)  # chi-square, 2 dof, p = 0.001
    # per-domain indices are running counters: each domain's samples 0..count-1 exactly once
    s2 = DomainSampler(["a", "b", "c", "d"], w, seed=1227, global_batch_size=64)
    plans = [s2.next_plan() for _ in range(200)]
    dom = np.concatenate([p[0] for p in plans])
    idx = np.concatenate([p[1] for p in plans])
    for d in range(3):
        assert sorted(idx[dom == d].tolist()) == list(range(counts[d]))


def test_presets_map_onto_domain_names():
    names = ["RedPajamaCommonCrawl", "c4", "Github", "wiki", "books", "ArXiv", "stack-exchange"]
    np.testing.assert_allclose(preset_weights("llama", names), [.67, .15, .045, .045, .045, .025, .02])
    w = preset_weights("sheared_llama", names)
    np.testing.assert_allclose(w, np.array([.361, .492, .008, .031, .091, .007, .01]) / 1.0, atol=1e-12)
    assert preset_weights("uniform", ["x", "y"]).tolist() == [0.5, 0.5]
    with pytest.raises(DataError, match=r"has no entry for domain\(s\) prose"):
        preset_weights("llama", ["cc", "prose"])
    with pytest.raises(DataError, match=r"also weights c4, github, wikipedia, book, arxiv, stackexchange"):
        preset_weights("llama", ["cc"])
    with pytest.raises(DataError, match=r"unknown data.weights_preset 'lama'"):
        preset_weights("lama", ["cc"])


def test_dynamic_rules_against_hand_computed_values():
    a = np.array([0.5, 0.3, 0.2])
    L, ref = np.array([2.0, 1.5, 1.0]), np.array([1.8, 1.6, 0.9])
    # softmax(log a + (L - Lref)) = a*exp(d)/sum; then (1 - 1e-4) a' + 1e-4/3
    np.testing.assert_allclose(sheared_update(a, L, ref, eta=1.0, smoothing=1e-4),
                               [0.5535572836976683, 0.24606971014150664, 0.20037300616082512], rtol=1e-12)
    np.testing.assert_allclose(sheared_update(a, L, ref, eta=0.5, smoothing=0.1),
                               [0.5077875191628627, 0.27835323464837286, 0.2138592461887646], rtol=1e-12)
    # paper: a * exp(max(0, L - Lref)) normalised; github (below reference) keeps its factor 1
    np.testing.assert_allclose(paper_update(a, L, ref, eta=1.0),
                               [0.539614905822794, 0.26507959092984024, 0.19530550324736576], rtol=1e-12)


def test_dynamic_update_through_the_data_object(three_domains):
    doms = [dict(d, ref_loss=r) for d, r in zip(three_domains, (1.8, 1.6, 0.9), strict=True)]
    data = make(doms, sampling="dynamic", dynamic_smoothing=1e-4)
    assert data.weights == pytest.approx({"cc": 1 / 3, "github": 1 / 3, "book": 1 / 3})
    new = data.update_weights({"cc": 2.0, "github": 1.5, "book": 1.0})
    e = np.exp([0.2, -0.1, 0.1])
    want = (1 - 1e-4) * e / e.sum() + 1e-4 / 3
    assert list(new.values()) == pytest.approx(list(want / want.sum()), rel=1e-12)
    with pytest.raises(DataError, match="missing book"):
        data.update_weights({"cc": 2.0, "github": 1.5})
    static = make(three_domains)
    assert static.update_weights({"cc": 9.0, "github": 0.0, "book": 0.0}) == static.weights
    with pytest.raises(DataError, match="needs a reference loss for domain cc"):
        make(three_domains, sampling="dynamic")
    with pytest.raises(ConfigError, match="data.dynamic_variant='x'"):
        make(three_domains, sampling="dynamic", dynamic_variant="x")
    with_preset = make(three_domains, sampling="dynamic", ref_losses_preset="llama2-7b")
    np.testing.assert_allclose(with_preset.ref_losses, [1.6917, 0.6984, 1.9252])


def test_global_batch_is_layout_independent(three_domains):
    one = make(three_domains, gbs=8)
    two = [make(three_domains, gbs=8, rank=r, dp=2) for r in range(2)]
    for _ in range(5):
        full = one.next_step()
        halves = [d.next_step() for d in two]
        assert torch.equal(full.tokens, torch.cat([h.tokens for h in halves]))
        assert torch.equal(full.domain_ids, torch.cat([h.domain_ids for h in halves]))
        assert full.global_domain_counts == halves[0].global_domain_counts
        mbs = list(halves[1].micro_batches(2))
        assert len(mbs) == 2 and torch.equal(torch.cat([m[0] for m in mbs]), halves[1].tokens)
    assert full.tokens.shape == (8, 9) and full.tokens.dtype == torch.int64


def test_exhausted_domain_wraps_with_new_shuffle(three_domains, caplog):
    data = make([dict(three_domains[2], weight=1.0)], gbs=4)
    dom = data.domains[0]
    n = dom.train.samples_per_epoch
    assert 2 <= n <= 4
    with caplog.at_level(logging.INFO, logger="megatron_moe.data.dataset"):
        rows = torch.cat([data.next_step().tokens for _ in range(3)])  # 12 samples: 3+ epochs
    assert "domain book: training data exhausted, starting epoch 1 with a new shuffle" in caplog.text
    assert data.epochs == {"book": 12 // n}
    for k in range(12):
        e, slot = divmod(k, n)
        stream = np.concatenate([dom.get(int(d)) for d in dom.train.order_for_epoch(e)])
        assert rows[k].tolist() == stream[slot * 8:slot * 8 + 9].tolist()
    orders = {tuple(dom.train.order_for_epoch(e)) for e in range(4)}
    assert len(orders) > 1


def test_state_round_trip_continues_identically(three_domains):
    kw = dict(sampling="dynamic", ref_losses_preset="llama2-7b", dynamic_eta=3.0)
    a = make(three_domains, **kw)
    for step in range(4):
        a.next_step()
    a.update_weights({"cc": 2.5, "github": 0.7, "book": 3.0})
    state = json.loads(json.dumps(a.state_dict()))
    assert state["step"] == 4 and sum(state["consumed"].values()) == 32
    b = make(three_domains, **kw)
    b.load_state_dict(state)
    assert b.weights == a.weights
    for _ in range(6):
        x, y = a.next_step(), b.next_step()
        assert x.step == y.step and torch.equal(x.tokens, y.tokens) and torch.equal(x.domain_ids, y.domain_ids)
    c = make(three_domains, seed=12, **kw)
    with pytest.raises(DataError, match="seed=11 but this run has data.seed=12"):
        c.load_state_dict(state)


def test_valid_batches_sliced_per_rank(tmp_path, three_domains):
    cfg = dict(domains=three_domains[:2], seq_len=8, valid_fraction=0.1, seed=4)
    full = MultiDomainData(DataConfig(**cfg), 8, 0, 1)
    parts = [MultiDomainData(DataConfig(**cfg), 8, r, 2) for r in range(2)]
    whole = list(full.valid_batches("github", 3, 4))
    halves = [list(p.valid_batches("github", 3, 4)) for p in parts]
    assert [t.shape for t in whole] == [(4, 9)] * 3
    for b in range(3):
        assert torch.equal(whole[b], torch.cat([halves[0][b], halves[1][b]]))
    assert torch.equal(torch.cat(list(parts[1].valid_batches("github", 3, 4, sliced=False))), torch.cat(whole))
    # all validation tokens come from validation documents of github (token values 40000+)
    valid_tokens = {t for d in full.domains[1].valid_docs for t in full.domains[1].get(int(d)).tolist()}
    assert set(torch.cat(whole).flatten().tolist()) <= valid_tokens
    with pytest.raises(DataError, match="unknown domain 'c4'"):
        next(full.valid_batches("c4", 1, 4))
