"""Co-activation graph partition (MoEfication): neurons that fire together go to the same expert.

Accumulate A_FF += clamp(f(h)^T f(h), max=1) over calibration batches of FFN activations h [T, F]
(h = SiLU(W_gate x) * (W_up x), the down-projection input), with f = |h|, h^2 or identity. Edges below a
threshold are dropped, the graph is partitioned into E parts with METIS (pymetis), and over-full parts
give their least-attached neurons to under-full ones until every part has exactly F/E neurons.

Legend: T tokens, F neurons, E experts.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from .common import PartitionError, check_divisible, labels_to_assignment

log = logging.getLogger(__name__)
ACTIVATION_FNS = ("abs", "square", "identity")
_EDGE_SCALE = 1000  # METIS takes integer edge weights: weights are scaled so the largest becomes this


def coactivation_update(A_FF: torch.Tensor, h_TF: torch.Tensor, fn: str = "abs") -> torch.Tensor:
    """A_FF += clamp(f(h)^T f(h), max=1) in place; returns A_FF."""
    if fn not in ACTIVATION_FNS:
        raise PartitionError(f"co-activation function {fn!r} is not one of {', '.join(ACTIVATION_FNS)}")
    h = h_TF.detach().to(A_FF.dtype)
    f = h.abs() if fn == "abs" else h * h if fn == "square" else h
    A_FF += (f.T @ f).clamp_(max=1.0)
    return A_FF


def metis_labels(A_FF: torch.Tensor, num_parts: int, threshold: float = 0.0, seed: int = 1227,
                 max_degree: Optional[int] = 256) -> np.ndarray:
    """METIS partition of the symmetric graph A (self loops and edges <= threshold dropped). With
    `max_degree`, each neuron keeps only its strongest edges (an edge stays if either end keeps it):
    a 7B layer's dense graph has 1.2e8 edges, too many for METIS; 256 per neuron keeps ~2.8e6."""
    import pymetis

    F = A_FF.shape[0]
    A = A_FF.detach().double().cpu().clone()
    A.fill_diagonal_(0.0)
    A = (A + A.T) / 2
    top = float(A.max())
    keep = A > max(threshold, 0.0)
    if max_degree is not None and max_degree < F - 1:
        strongest = torch.zeros_like(keep)
        strongest.scatter_(1, A.topk(max_degree, dim=1).indices, True)
        keep &= strongest | strongest.T
    if top <= 0 or not bool(keep.any()):
        raise PartitionError("the co-activation graph has no edge above the threshold; use more calibration "
                             "tokens or a lower threshold")
    weights = torch.where(keep, (A / top * _EDGE_SCALE).round().clamp_min(1), torch.zeros_like(A))
    rows, cols = weights.nonzero(as_tuple=True)
    xadj = np.concatenate([[0], np.cumsum(np.bincount(rows.numpy(), minlength=F))]).astype(np.int64)
    opts = pymetis.Options(seed=int(seed))
    graph = pymetis.CSRAdjacency(adj_starts=xadj, adjacent=cols.numpy())
    _, parts = pymetis.part_graph(num_parts, graph, eweights=weights[rows, cols].long().numpy(), options=opts)
    return np.asarray(parts, dtype=np.int64)


def rebalance(A_FF: torch.Tensor, labels_F: np.ndarray, num_parts: int) -> torch.Tensor:
    """Move neurons out of over-full parts until each part has exactly F/E; each move takes the
    (neuron, target) pair that loses the least attachment: argmax A[i, target part] - A[i, own part]."""
    F = A_FF.shape[0]
    cap = check_divisible(F, num_parts)
    A = A_FF.detach().double().cpu()
    labels = torch.as_tensor(labels_F, dtype=torch.long).clone()
    onehot_FE = torch.nn.functional.one_hot(labels, num_parts).double()
    attach_FE = A @ onehot_FE  # attachment of each neuron to each part
    sizes = onehot_FE.sum(0).long()
    moves = 0
    while bool((sizes > cap).any()):
        over, under = sizes > cap, sizes < cap
        own = attach_FE.gather(1, labels[:, None]).squeeze(1)
        gain_FE = attach_FE - own[:, None]
        gain_FE[~over[labels]] = -torch.inf
        gain_FE[:, ~under] = -torch.inf
        best = int(gain_FE.reshape(-1).argmax())
        i, dst = divmod(best, num_parts)
        src = int(labels[i])
        labels[i] = dst
        attach_FE[:, src] -= A[:, i]
        attach_FE[:, dst] += A[:, i]
        sizes[src] -= 1
        sizes[dst] += 1
        moves += 1
    log.debug("co-activation rebalance: %d moves", moves)
    return labels


def coactivation_partition(A_FF: torch.Tensor, num_experts: int, threshold: float = 0.0,
                           seed: int = 1227) -> torch.Tensor:
    """Partition the co-activation graph A [F, F] into E experts of exactly F/E neurons; [E, F/E]."""
    check_divisible(A_FF.shape[0], num_experts)
    if num_experts == 1:
        return torch.arange(A_FF.shape[0]).view(1, -1)
    labels = metis_labels(A_FF, num_experts, threshold, seed)
    return labels_to_assignment(rebalance(A_FF, labels, num_experts), num_experts)
