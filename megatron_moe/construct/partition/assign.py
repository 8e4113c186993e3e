"""Capacity-constrained assignment of N points to E bins (a transportation problem), solved exactly.

Minimise sum_i cost[i, label_i] subject to every bin holding at most `capacity` points (exactly
`capacity` when N == E * capacity).

Method: successive shortest paths on the small E-node "bin graph". Start from argmin_j(cost + price_j):
for any prices this assignment is optimal for its own bin sizes. Then, while a bin is over capacity,
move one point along the cheapest chain of moves from an over-full bin to an under-full one. The edge
j -> k costs min over points i in bin j of (cost[i, k] - cost[i, j]); shortest paths use Bellman-Ford
(edges may be negative, cycles never are), so every step keeps the assignment optimal for its sizes and
the last one is the optimum. Final shortest-path distances give bin prices that warm-start the next
call (Lloyd iterations of balanced k-means move the costs only a little, so few moves are needed).

Legend: N points, E bins.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .common import PartitionError


class _BinGraph:
    def __init__(self, cost_NE: np.ndarray, labels_N: np.ndarray):
        self.c, self.labels = cost_NE, labels_N
        E = cost_NE.shape[1]
        self.W = np.full((E, E), np.inf)       # cheapest move j -> k
        self.arg = np.zeros((E, E), dtype=np.int64)  # the point making it
        for j in range(E):
            self.update_row(j)

    def update_row(self, j: int) -> None:
        members = np.flatnonzero(self.labels == j)
        if members.size == 0:
            self.W[j] = np.inf
            return
        delta = self.c[members] - self.c[members, j][:, None]
        best = delta.argmin(0)
        self.W[j] = delta[best, np.arange(delta.shape[1])]
        self.W[j, j] = np.inf
        self.arg[j] = members[best]

    def shortest(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        E = self.W.shape[0]
        dist = np.where(sources, 0.0, np.inf)
        pred = np.full(E, -1)
        for _ in range(E):
            cand = dist[:, None] + self.W
            frm = cand.argmin(0)
            new = cand[frm, np.arange(E)]
            better = new < dist - 1e-12
            if not better.any():
                break
            dist[better], pred[better] = new[better], frm[better]
        return dist, pred


def _presolve_prices(c: np.ndarray, capacity: int, p: np.ndarray, steps: int = 25):
    """A few damped price steps toward balance (dual subgradient ascent): cheap, and it leaves far
    fewer points for the exact shortest-path moves. Any prices are a valid starting point."""
    E = c.shape[1]
    two = np.partition(c, 1, axis=1)[:, :2]
    scale = float(np.median(two[:, 1] - two[:, 0])) or 1e-12
    best = None
    for t in range(steps):
        labels = (c + p).argmin(1)
        sizes = np.bincount(labels, minlength=E)
        excess = int(np.clip(sizes - capacity, 0, None).sum())
        if best is None or excess < best[0]:
            best = (excess, labels, sizes)
        if excess <= 1:
            break
        p = p + scale * (sizes - capacity) / capacity / (1 + t) ** 0.5
    return best[1], best[2]


def balanced_assign(cost_NE: torch.Tensor, capacity: int, prices_E: Optional[torch.Tensor] = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels [N] minimising the total cost with at most `capacity` points per bin, and bin prices [E]
    (pass them back in to warm-start a similar problem)."""
    N, E = cost_NE.shape
    if E * capacity < N:
        raise PartitionError(f"{N} points do not fit in {E} bins of capacity {capacity}")
    c = cost_NE.detach().to("cpu", torch.float64).numpy()
    p = np.zeros(E) if prices_E is None else prices_E.detach().to("cpu", torch.float64).numpy()
    labels, sizes = _presolve_prices(c, capacity, p)
    graph = _BinGraph(c, labels)
    while (sizes > capacity).any():
        dist, pred = graph.shortest(sizes > capacity)
        dist_to_free = np.where(sizes < capacity, dist, np.inf)
        k = int(dist_to_free.argmin())
        if not np.isfinite(dist_to_free[k]):
            raise PartitionError("balanced assignment found no augmenting path")  # cannot happen for finite costs
        touched = [k]
        while pred[k] >= 0:
            j = int(pred[k])
            labels[graph.arg[j, k]] = k
            touched.append(j)
            k = j
        sizes[touched[0]] += 1
        sizes[touched[-1]] -= 1
        for j in touched:
            graph.update_row(j)
    dist, _ = graph.shortest(np.ones(E, dtype=bool))
    return torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(-dist)
