"""Independent-Clustering: balanced k-means of the FFN neurons' input weight vectors.

Each neuron i is the row W_up[i] (or W_gate[i]), L2-normalised. Lloyd iterations alternate a
*balanced* assignment step (every cluster exactly N/K points; an exact min-cost transportation solved
by successive shortest paths, warm-started from the previous iteration's prices, see assign.py) and a centroid step. Distances are one matmul in torch.
k-means++ seeding (with a few local trials per centre), several seeded restarts, the lowest cost wins.

Metrics: `l2` minimises the within-cluster sum of squared distances to the cluster means;
`cosine` is spherical k-means (distance 1 - cos(x, c) to the normalised mean).

Legend: N points (neurons), D features (hidden size), K clusters (experts).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional

import torch

from .assign import balanced_assign
from .common import PartitionError, check_divisible, generator, labels_to_assignment

log = logging.getLogger(__name__)
METRICS = ("l2", "cosine")


def _distances(x_ND: torch.Tensor, c_KD: torch.Tensor, metric: str) -> torch.Tensor:
    """Assignment cost [N, K] (row-constant terms dropped: they do not change a balanced assignment)."""
    if metric == "cosine":
        return -(x_ND @ torch.nn.functional.normalize(c_KD, dim=1).T)
    return (c_KD * c_KD).sum(1) - 2.0 * (x_ND @ c_KD.T)


def _centroids(x_ND: torch.Tensor, labels_N: torch.Tensor, K: int) -> torch.Tensor:
    onehot_KN = torch.nn.functional.one_hot(labels_N, K).T.to(x_ND.dtype)
    return (onehot_KN @ x_ND) / onehot_KN.sum(1, keepdim=True).clamp_min(1)


def kmeans_cost(x_ND: torch.Tensor, labels_N: torch.Tensor, num_clusters: int) -> float:
    """Within-cluster sum of squared Euclidean distances to the cluster means."""
    x = x_ND.float()
    c = _centroids(x, labels_N, num_clusters)
    return float(((x - c[labels_N]) ** 2).sum(1).double().sum())


def _kmeanspp(x_ND: torch.Tensor, K: int, g: torch.Generator) -> torch.Tensor:
    N = x_ND.shape[0]
    sq_N = (x_ND * x_ND).sum(1)
    trials = 2 + int(math.log(K))
    centers = [int(torch.randint(N, (1,), generator=g))]
    d2_N = (sq_N - 2 * x_ND @ x_ND[centers[0]] + sq_N[centers[0]]).clamp_min(0)
    for _ in range(1, K):
        probs = d2_N / d2_N.sum() if float(d2_N.sum()) > 0 else torch.full_like(d2_N, 1.0 / N)
        cand = torch.multinomial(probs.float(), trials, replacement=True, generator=g)
        d2_TN = (sq_N[None] - 2 * x_ND[cand] @ x_ND.T + sq_N[cand][:, None]).clamp_min(0)
        new_TN = torch.minimum(d2_N[None], d2_TN)
        best = int(new_TN.sum(1).argmin())
        centers.append(int(cand[best]))
        d2_N = new_TN[best]
    return x_ND[centers].clone()


@contextlib.contextmanager
def _torch_threads(n: Optional[int]):
    """Temporarily set torch's intra-op threads. The loop alternates small matmuls with numpy work;
    on a busy machine waking a thread pool for each small matmul costs more than it saves."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def balanced_kmeans(x_ND: torch.Tensor, num_clusters: int, metric: str = "l2", seed: int = 1227,
                    n_init: int = 3, max_iter: int = 100, tol: float = 1e-3,
                    threads: Optional[int] = 1) -> tuple[torch.Tensor, float]:
    """Balanced k-means: labels [N] with exactly N/K points per cluster, and the l2 cost of the best run.
    A run stops when an iteration moves at most tol * N points (0: until nothing moves).
    `threads`: torch threads while it runs (None keeps the current setting)."""
    with _torch_threads(threads):
        return _balanced_kmeans(x_ND, num_clusters, metric, seed, n_init, max_iter, tol)


def _balanced_kmeans(x_ND, num_clusters, metric, seed, n_init, max_iter, tol):
    if metric not in METRICS:
        raise PartitionError(f"clustering metric {metric!r} is not one of {', '.join(METRICS)}")
    N = x_ND.shape[0]
    cap = check_divisible(N, num_clusters)
    x = x_ND.detach().to("cpu", torch.float32).contiguous()
    g = generator(seed)
    best_labels, best_cost = None, math.inf
    for run in range(n_init):
        centers = _kmeanspp(x, num_clusters, g)
        labels, prices, moved = None, None, N
        for it in range(max_iter):
            new_labels, prices = balanced_assign(_distances(x, centers, metric), cap, prices)
            if labels is not None:
                moved = int((new_labels != labels).sum())
            labels = new_labels
            if moved <= tol * N:
                break
            centers = _centroids(x, labels, num_clusters)
        cost = kmeans_cost(x, labels, num_clusters)
        log.debug("balanced k-means run %d: %d iterations, cost %.6g", run, it + 1, cost)
        if cost < best_cost:
            best_labels, best_cost = labels, cost
    return best_labels, best_cost


def clustering_partition(w_FD: torch.Tensor, num_experts: int, metric: str = "l2", seed: int = 1227,
                         n_init: int = 3, max_iter: int = 100) -> torch.Tensor:
    """Cluster the L2-normalised rows of W_up (or W_gate) [F, D] into E experts of exactly F/E neurons.
    Returns the assignment [E, F/E]."""
    x_FD = torch.nn.functional.normalize(w_FD.detach().float(), dim=1)
    labels, _ = balanced_kmeans(x_FD, num_experts, metric, seed, n_init, max_iter)
    return labels_to_assignment(labels, num_experts)
