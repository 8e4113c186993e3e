"""Token movement between the attention layout (TP x DP) and the expert layout (ETP x EP x EDP), over the same ranks
("parallel folding", as megatron-core), with our device-agnostic autograd collectives only.

Legend: T tokens, D hidden, E experts, e local experts (E / ep), K top-k, P = T*K (token, slot) assignments,
R rows received at this rank's experts.

Rules (every step's backward is the transpose of its forward):
  1. shard:    every rank must hold *distinct* tokens. Under SP the MLP input already is this TP rank's sequence
               chunk. Without SP it is replicated over TP: the router runs on all tokens (identically on every TP
               rank) and then each TP rank keeps its 1/tp chunk of the flattened tokens (`scatter_seq`; backward
               all-gathers the token gradients). Needs B*S divisible by tp.
  2. capacity: optional dropping (see `apply_capacity`), on this rank's tokens, before any communication.
  3. ETP:      all-gather the tokens (and their expert choices and routing weights) over the expert-TP group:
               every ETP rank of an expert then sees the same rows and applies its F/etp slice (backward:
               reduce-scatter).
  4. EP:       sort assignments by global expert; all-to-all the per-expert counts over the EP group; ONE host sync
               (`.tolist()` of local + received counts) gives the split sizes; all-to-all the rows and their
               routing weights; re-sort the received [source rank][local expert] chunks by local expert.
  5. experts on rows sorted by local expert; each row's output comes back scaled by its routing weight (the
               experts apply it on the [R, F] activation, F/D of the traffic of scaling the [R, D] output here).
  6. combine:  inverse of 4 (un-sort, all-to-all back), add each row to its token (dropped slots add nothing),
               then reduce-scatter the partial (F-slice) results over ETP, then undo 1 (without SP: all-reduce of
               the zero-padded chunks, whose backward hands each rank its own chunk of the replicated output
               gradient).
This scheme moves etp x more rows through the EP all-to-all than megatron-core (which all-gathers over ETP after
the all-to-all, with uneven sizes); it needs only equal-size ETP collectives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ...parallel import (ParallelState, all_reduce_sum, all_to_all, gather_seq, reduce_scatter_seq, scatter_seq)


def apply_capacity(weights_TK: torch.Tensor, indices_TK: torch.Tensor, num_experts: int,
                   capacity_factor: Optional[float]) -> torch.Tensor:
    """Capacity policy: each expert keeps at most C = ceil(capacity_factor * T * K / E) assignments of this rank's
    T tokens, the ones with the highest routing weight (ties: lower token index, then lower slot). Dropped
    assignments get index -1: they contribute nothing; the token still has its residual path (and any other of
    its k experts). None = dropless (indices returned unchanged)."""
    if capacity_factor is None:
        return indices_TK
    T, K = indices_TK.shape
    cap = math.ceil(capacity_factor * T * K / num_experts)
    e_P = indices_TK.reshape(-1)
    by_weight = torch.argsort(-weights_TK.detach().reshape(-1), stable=True)
    order = by_weight[torch.argsort(e_P[by_weight], stable=True)]  # grouped by expert, best weight first
    counts_E = torch.bincount(e_P, minlength=num_experts)
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    e_sorted = e_P[order]
    keep_sorted = (torch.arange(e_P.numel(), device=e_P.device) - starts_E[e_sorted]) < cap
    keep_P = torch.empty_like(keep_sorted).index_copy_(0, order, keep_sorted)
    return torch.where(keep_P, e_P, torch.full_like(e_P, -1)).view(T, K)


@dataclass
class Plan:
    """What combine needs to undo dispatch."""

    T: int                      # tokens at the sort step (after the ETP gather)
    K: int
    order_V: torch.Tensor       # valid assignment ids (t*K + slot), sorted by expert
    send_splits: list
    recv_splits: list
    perm_R: Optional[torch.Tensor]  # received row -> expert-sorted position (None when ep == 1)
    counts_e: list              # rows per local expert (host ints)


class Dispatcher:
    def __init__(self, num_experts: int, ps: ParallelState):
        self.E, self.ps = num_experts, ps
        self.e = num_experts // ps.ep_size
        self.shard_tp = ps.tp_size > 1 and not ps.sp

    # ------------------------------------------------------------------------------- 1. TP shard
    def shard(self, x_TD, weights_TK, indices_TK):
        """Rule 1: this rank's distinct tokens (identity unless TP without SP)."""
        if not self.shard_tp:
            return x_TD, weights_TK, indices_TK
        ps = self.ps
        if x_TD.shape[0] % ps.tp_size:
            raise ValueError(f"MoE without sequence parallelism: {x_TD.shape[0]} tokens (batch*seq) are not "
                             f"divisible by tp={ps.tp_size}")
        idx_TK = indices_TK.chunk(ps.tp_size, dim=0)[ps.tp_rank]
        return scatter_seq(x_TD, ps.tp_group, 0), scatter_seq(weights_TK, ps.tp_group, 0), idx_TK

    def unshard(self, y_TD: torch.Tensor) -> torch.Tensor:
        """Undo rule 1: the replicated [tp*T, D] output from every rank's chunk."""
        if not self.shard_tp:
            return y_TD
        ps = self.ps
        T, D = y_TD.shape
        before = y_TD.new_zeros(ps.tp_rank * T, D)
        after = y_TD.new_zeros((ps.tp_size - 1 - ps.tp_rank) * T, D)
        return all_reduce_sum(torch.cat([before, y_TD, after]), ps.tp_group)

    # ---------------------------------------------------------------------------- 3-4. dispatch
    def dispatch(self, x_TD: torch.Tensor, weights_TK: torch.Tensor,
                 indices_TK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Plan]:
        """Rows for this rank's experts sorted by local expert, their routing weights [R], and the plan to send
        results back."""
        ps, E, e = self.ps, self.E, self.e
        if ps.etp_size > 1:
            x_TD = gather_seq(x_TD, ps.etp_group, 0)
            weights_TK = gather_seq(weights_TK, ps.etp_group, 0)
            indices_TK = gather_seq(indices_TK, ps.etp_group, 0)
        T, K = indices_TK.shape
        key_P = indices_TK.reshape(-1)
        key_P = torch.where(key_P < 0, torch.full_like(key_P, E), key_P)  # dropped sort last
        order_P = torch.argsort(key_P, stable=True)
        counts_E = torch.bincount(key_P, minlength=E + 1)[:E]
        if ps.ep_size > 1:
            recv_Pe = all_to_all(counts_E, [e] * ps.ep_size, [e] * ps.ep_size, ps.ep_group)
            host = torch.cat([counts_E, recv_Pe]).tolist()  # the one host sync of the layer
            send_E, recv = host[:E], host[E:]
        else:
            send_E = recv = counts_E.tolist()  # the one host sync of the layer
        n_valid = sum(send_E)
        order_V = order_P[:n_valid]
        x_VD = x_TD.index_select(0, order_V // K)
        w_V = weights_TK.reshape(-1).index_select(0, order_V)
        send_splits = [sum(send_E[r * e:(r + 1) * e]) for r in range(ps.ep_size)]
        recv_splits = [sum(recv[r * e:(r + 1) * e]) for r in range(ps.ep_size)]
        counts_e = [sum(recv[r * e + i] for r in range(ps.ep_size)) for i in range(e)]
        perm_R = None
        if ps.ep_size > 1:
            x_RD = all_to_all(x_VD, recv_splits, send_splits, ps.ep_group)
            w_R = all_to_all(w_V, recv_splits, send_splits, ps.ep_group)
            perm_R = self._expert_major_perm(recv, x_RD.device)
            x_RD, w_R = x_RD.index_select(0, perm_R), w_R.index_select(0, perm_R)
        else:
            x_RD, w_R = x_VD, w_V
        return x_RD, w_R, Plan(T, K, order_V, send_splits, recv_splits, perm_R, counts_e)

    def _expert_major_perm(self, recv: list, device: torch.device) -> torch.Tensor:
        """Received rows come as [source rank][local expert] chunks; index that reads them expert-major."""
        ep, e = self.ps.ep_size, self.e
        starts, acc = [], 0
        for n in recv:
            starts.append(acc)
            acc += n
        chunks = [(r * e + i) for i in range(e) for r in range(ep)]
        sizes = [recv[c] for c in chunks]
        new_starts, acc = [], 0
        for n in sizes:
            new_starts.append(acc)
            acc += n
        shift = torch.tensor([starts[c] - s for c, s in zip(chunks, new_starts)], dtype=torch.int64, device=device)
        sizes_t = torch.tensor(sizes, dtype=torch.int64, device=device)
        return torch.arange(acc, device=device) + torch.repeat_interleave(shift, sizes_t, output_size=acc)

    # ------------------------------------------------------------------------------- 6. combine
    def combine(self, out_RD: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Weighted expert outputs back to their tokens, summed over K; [T_local, D]."""
        ps = self.ps
        if plan.perm_R is not None:
            out_RD = torch.empty_like(out_RD).index_copy(0, plan.perm_R, out_RD)
            out_RD = all_to_all(out_RD, plan.send_splits, plan.recv_splits, ps.ep_group)
        # out_RD is now in order_V order: add each row to its token (index_add; on CUDA it is bitwise reproducible
        # for K <= 2, or for any K under torch.use_deterministic_algorithms)
        y_TD = out_RD.new_zeros(plan.T, out_RD.shape[1]).index_add(0, plan.order_V // plan.K, out_RD)
        if ps.etp_size > 1:
            y_TD = reduce_scatter_seq(y_TD, ps.etp_group, 0)
        return y_TD
