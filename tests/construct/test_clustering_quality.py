"""Balanced k-means against k-means-constrained (the reference's min-cost-flow constrained k-means).

Both partitions are scored by `_sse` below, a plain numpy within-cluster sum of squares written here: neither the
reference's cost nor ours comes from megatron_moe's own `kmeans_cost`.
"""
import numpy as np
import pytest
import torch

from _deps import require
from megatron_moe.construct.partition import balanced_kmeans


def _mixture(n, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3 * k, d, generator=g)
    x = centres[torch.randint(3 * k, (n,), generator=g)] + 1.5 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def _sse(x, labels) -> float:
    """Sum over clusters of the squared Euclidean distances of its points to their mean, in float64."""
    x, labels = np.asarray(x, dtype=np.float64), np.asarray(labels)
    return float(sum(((x[labels == c] - x[labels == c].mean(axis=0)) ** 2).sum() for c in np.unique(labels)))


def test_sse_by_hand():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 1.0], [10.0, 3.0]])
    assert _sse(x, [0, 0, 1, 1]) == 2.0 + 2.0   # means (1, 0) and (10, 2): 1 + 1 and 1 + 1
    assert _sse(x, [0, 1, 0, 1]) == pytest.approx(2 * (25 + 0.25) + 2 * (16 + 2.25))


def test_cost_within_2_percent_of_k_means_constrained():
    kmc = require("k_means_constrained")
    x = _mixture(384, 32, 6, seed=0)
    labels, cost = balanced_kmeans(x, 6, seed=0)
    assert torch.bincount(labels, minlength=6).tolist() == [64] * 6
    assert cost == pytest.approx(_sse(x, labels), rel=1e-5)  # the cost it reports is the cost of its labels
    ref = kmc.KMeansConstrained(n_clusters=6, size_min=64, size_max=64, random_state=0, n_init=4).fit(x.numpy())
    assert np.bincount(ref.labels_, minlength=6).tolist() == [64] * 6
    ref_cost = _sse(x, ref.labels_)
    assert cost <= 1.02 * ref_cost, (cost, ref_cost)


def test_recovers_planted_balanced_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=1) * 5
    truth = torch.arange(4).repeat_interleave(25)
    x = torch.nn.functional.normalize(centres[truth] + 0.3 * torch.randn(100, 64, generator=g), dim=1)
    labels, _ = balanced_kmeans(x, 4, seed=0, n_init=1)
    # the partition equals the truth up to relabelling
    assert sorted(sorted(truth[labels == c].tolist()) for c in range(4)) == [[k] * 25 for k in range(4)]
