"""Balanced k-means against k-means-constrained (the reference's min-cost-flow constrained k-means)."""
import pytest
import torch

from megatron_moe.construct.partition import balanced_kmeans, kmeans_cost


def _mixture(n, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3 * k, d, generator=g)
    x = centres[torch.randint(3 * k, (n,), generator=g)] + 1.5 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def test_cost_within_2_percent_of_k_means_constrained():
    kmc = pytest.importorskip("k_means_constrained")
    x = _mixture(384, 32, 6, seed=0)
    labels, cost = balanced_kmeans(x, 6, seed=0)
    assert torch.bincount(labels, minlength=6).tolist() == [64] * 6
    assert cost == pytest.approx(kmeans_cost(x, labels, 6))
    ref = kmc.KMeansConstrained(n_clusters=6, size_min=64, size_max=64, random_state=0, n_init=4).fit(x.numpy())
    ref_cost = kmeans_cost(x, torch.as_tensor(ref.labels_).long(), 6)
    assert cost <= 1.02 * ref_cost, (cost, ref_cost)


def test_recovers_planted_balanced_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=1) * 5
    truth = torch.arange(4).repeat_interleave(25)
    x = torch.nn.functional.normalize(centres[truth] + 0.3 * torch.randn(100, 64, generator=g), dim=1)
    labels, _ = balanced_kmeans(x, 4, seed=0, n_init=1)
    # the partition equals the truth up to relabelling
    assert sorted(sorted(truth[labels == c].tolist()) for c in range(4)) == [[k] * 25 for k in range(4)]
