"""Partition methods: balance, coverage, determinism, exactness, and the FFN-level lossless identity."""
import itertools

import numpy as np
import pytest
import torch

from megatron_moe.construct.partition.coactivation import metis_labels
from megatron_moe.construct.partition import (
    PartitionError, balanced_assign, build_expert_weights, build_shared_weights, check_cover, check_independent,
    clustering_partition, coactivation_partition, coactivation_update, experts_sum, gradient_partition,
    greedy_balanced_assignment, importance_update, random_partition, sharing_inner_partition,
    sharing_inter_partition, swiglu_ffn, upcycle_partition)

F, D, E = 96, 16, 4


def _weights(seed=0, f=F, d=D):
    g = torch.Generator().manual_seed(seed)
    # LLaMA-like scales: outputs of order one
    return (torch.randn(f, d, generator=g) / d ** 0.5, torch.randn(f, d, generator=g) / d ** 0.5,
            torch.randn(d, f, generator=g) / f ** 0.5)


def _importance(seed=0, c=E, f=F):
    return torch.rand(c, f, generator=torch.Generator().manual_seed(seed))


def _independent(method, seed):
    w1, w3, _ = _weights(seed)
    if method == "random":
        return random_partition(F, E, seed)
    if method == "clustering":
        return clustering_partition(w3, E, seed=seed, n_init=2)
    if method == "clustering-cos":
        return clustering_partition(w1, E, metric="cosine", seed=seed, n_init=2)
    if method == "co-activation":
        A = coactivation_update(torch.zeros(F, F), torch.randn(64, F, generator=torch.Generator().manual_seed(seed)))
        return coactivation_partition(A, E, seed=seed)
    if method == "gradient":
        return gradient_partition(_importance(seed), E)
    raise AssertionError(method)


INDEP = ["random", "clustering", "clustering-cos", "co-activation", "gradient"]


@pytest.mark.parametrize("method", INDEP)
def test_independent_balanced_cover_sorted(method):
    a = _independent(method, seed=3)
    assert a.shape == (E, F // E) and a.dtype == torch.long
    assert sorted(a.reshape(-1).tolist()) == list(range(F))
    assert bool((a[:, 1:] > a[:, :-1]).all())


@pytest.mark.parametrize("method", INDEP)
def test_deterministic(method):
    assert torch.equal(_independent(method, 5), _independent(method, 5))


def test_random_seed_changes_split():
    assert not torch.equal(random_partition(F, E, 1), random_partition(F, E, 2))
    assert torch.equal(random_partition(F, E, 1), random_partition(F, E, 1))


def test_not_divisible_errors():
    with pytest.raises(PartitionError, match="not divisible"):
        random_partition(100, 16)
    with pytest.raises(PartitionError, match="not divisible"):
        clustering_partition(torch.randn(30, 4), 4)
    with pytest.raises(PartitionError, match="metric"):
        clustering_partition(torch.randn(32, 4), 4, metric="manhattan")
    with pytest.raises(PartitionError, match="granularity"):
        upcycle_partition(96, 4, granularity=3)


def test_balanced_assign_matches_brute_force():
    # every labelling with 2 points per bin, 6 points, 3 bins: the optimum by enumeration
    cost = torch.rand(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    best = min(sum(float(cost[i, l]) for i, l in enumerate(labels))
               for labels in itertools.product(range(3), repeat=6) if np.bincount(labels, minlength=3).max() == 2)
    labels, _ = balanced_assign(cost, 2)
    assert np.bincount(labels.numpy(), minlength=3).tolist() == [2, 2, 2]
    assert float(cost[torch.arange(6), labels].sum()) == pytest.approx(best, abs=1e-9)


def test_balanced_assign_matches_linear_sum_assignment():
    from scipy.optimize import linear_sum_assignment

    cost = torch.rand(240, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels, prices = balanced_assign(cost, 30)
    big = cost.repeat_interleave(30, dim=1).numpy()
    r, c = linear_sum_assignment(big)
    assert float(cost[torch.arange(240), labels].sum()) == pytest.approx(float(big[r, c].sum()), abs=1e-6)
    # warm start from the returned prices gives the same optimum
    labels2, _ = balanced_assign(cost, 30, prices)
    assert float(cost[torch.arange(240), labels2].sum()) == pytest.approx(float(big[r, c].sum()), abs=1e-6)


def test_greedy_balanced_assignment_takes_best_pairs():
    score = torch.tensor([[9.0, 8.0, 0.0, 0.0], [9.5, 1.0, 2.0, 0.5]])
    # best pair (1,0)=9.5, then (0,1)=8 (expert 0 cannot have neuron 0), then (1,2)=2, then (0,3)/(0,2)...
    out = greedy_balanced_assignment(score, 2)
    assert out.tolist() == [[1, 3], [0, 2]]


def test_sharing_inner_top_neurons_overlap():
    imp = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0, 1.0], [5.0, 0.0, 0.0, 4.0, 3.0, 0.0]])
    out = sharing_inner_partition(imp, 3)
    assert out.tolist() == [[0, 1, 2], [0, 3, 4]]


def test_sharing_inter_covers_once_and_shares_most_voted():
    imp = _importance(2, c=4, f=96)
    imp[:, 7] += 10.0  # neuron 7 is in every cluster's top list
    routed, shared = sharing_inter_partition(imp, expert_size=20, shared_size=16)
    assert routed.shape == (4, 20) and shared.shape == (16,)
    check_cover(routed, shared, 96)
    assert 7 in shared.tolist()
    with pytest.raises(PartitionError):
        sharing_inter_partition(imp, expert_size=20, shared_size=15)


def test_upcycle_slices():
    out = upcycle_partition(8, 4, granularity=2)
    assert out.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7]]
    assert upcycle_partition(8, 2, 1).tolist() == [list(range(8))] * 2


def test_coactivation_groups_coactive_neurons():
    # 4 groups of 8 neurons; tokens activate exactly one group each -> METIS recovers the groups
    g = torch.Generator().manual_seed(0)
    group_T = torch.randint(4, (400,), generator=g)
    h = torch.zeros(400, 32)
    for k in range(4):
        h[group_T == k, k * 8:(k + 1) * 8] = 0.2 + torch.rand(int((group_T == k).sum()), 8, generator=g)
    perm = torch.randperm(32, generator=g)
    A = coactivation_update(torch.zeros(32, 32), h[:, perm])
    out = coactivation_partition(A, 4, seed=0)
    groups = sorted(sorted((perm[out[e]] // 8).tolist()) for e in range(4))
    assert groups == [[k] * 8 for k in range(4)]
    # sparsified to each neuron's 4 strongest edges (all inside its group): same partition
    A += 0.01 * torch.rand(32, 32, generator=g)  # weak cross-group edges that the sparsification drops
    labels = metis_labels(A, 4, seed=0, max_degree=4)
    assert sorted(sorted((perm[torch.as_tensor(labels) == c] // 8).tolist()) for c in range(4)) == [[k] * 8 for k in range(4)]


def test_coactivation_clamps_and_accumulates():
    A = torch.zeros(2, 2)
    coactivation_update(A, torch.tensor([[2.0, 0.1], [1.0, -0.5]]), fn="abs")
    # |h|^T|h| = [[5, 0.7], [0.7, 0.26]] clamped at 1
    assert torch.allclose(A, torch.tensor([[1.0, 0.7], [0.7, 0.26]]))


def test_importance_update_per_cluster():
    acc = torch.zeros(2, 3)
    h = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, 1.0]])
    dh = torch.tensor([[0.5, 0.5, 1.0], [-1.0, 2.0, 0.0]])
    importance_update(acc, h, dh, torch.tensor([1, 1]))
    assert acc.tolist() == [[0.0, 0.0, 0.0], [3.5, 3.0, 0.0]]


@pytest.mark.parametrize("method", INDEP)
def test_lossless_ffn_identity(method):
    w1, w3, w2 = _weights(0)
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(9))
    experts = build_expert_weights(w1, w3, w2, _independent(method, 1))
    assert experts[0].shape == (E, F // E, D) and experts[2].shape == (E, D, F // E)
    assert (experts_sum(x, *experts) - swiglu_ffn(x, w1, w3, w2)).abs().max() <= 1e-5


def test_lossless_sharing_inter_and_upcycle():
    w1, w3, w2 = _weights(0)
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(9))
    dense = swiglu_ffn(x, w1, w3, w2)
    routed, shared = sharing_inter_partition(_importance(0), expert_size=16, shared_size=32)
    moe = experts_sum(x, *build_expert_weights(w1, w3, w2, routed)) + swiglu_ffn(x, *build_shared_weights(w1, w3, w2, shared))
    assert (moe - dense).abs().max() <= 1e-5
    up = build_expert_weights(w1, w3, w2, upcycle_partition(F, 8, granularity=2))
    assert (experts_sum(x, *up, weight=2 / 8) - dense).abs().max() <= 1e-5


def test_sharing_inner_is_not_lossless():
    w1, w3, w2 = _weights(0)
    x = torch.randn(7, D)
    inner = build_expert_weights(w1, w3, w2, sharing_inner_partition(_importance(0), F // E))
    check = lambda a: check_independent(a, F)  # noqa: E731
    with pytest.raises(PartitionError):
        check(sharing_inner_partition(_importance(0), F // E))
    assert (experts_sum(x, *inner) - swiglu_ffn(x, w1, w3, w2)).abs().max() > 1e-3
