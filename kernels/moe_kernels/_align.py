"""Block-aligned sorted (token, slot) pair ids, built on the tensor's device without a host sync.

Shape legend: T tokens, K top-k, E experts, P = T*K pairs, R = padded rows (worst case), BM row tile.

Pairs are sorted by expert (stable, so within an expert they stay in token order); each expert's list is
padded up to a multiple of BM with the sentinel P, so every BM-row tile belongs to exactly one expert.
Pairs whose expert index is outside [0, E) (experts living on other ranks) are dropped. R is the worst
case P + E*(BM-1) rounded up to BM, known from shapes alone; tiles past the real end get expert -1 and
their programs exit at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AlignedPairs:
    sorted_ids_R: torch.Tensor    # int64 [R]: pair id (t*K + j) per padded row, P for padding rows
    block_expert_B: torch.Tensor  # int32 [R // BM]: expert of each row tile, -1 past the end
    pad_off_E: torch.Tensor       # int32 [E]: first padded row of each expert
    pad_cnt_E: torch.Tensor       # int32 [E]: padded row count of each expert (multiple of BM, 0 if empty)
    counts_E: torch.Tensor        # int64 [E]: real pairs per expert
    block_m: int
    num_rows: int                 # R


def worst_case_rows(num_pairs: int, E: int, block_m: int) -> int:
    rows = num_pairs + E * (block_m - 1)
    return max(block_m, -(-rows // block_m) * block_m)


def align_pairs(indices_TK: torch.Tensor, E: int, block_m: int) -> AlignedPairs:
    device = indices_TK.device
    P = indices_TK.numel()
    key_P = indices_TK.reshape(-1).long()
    valid_P = (key_P >= 0) & (key_P < E)
    key_P = torch.where(valid_P, key_P, torch.full_like(key_P, E))
    # Integer scatter-add: order-independent, deterministic.
    counts_E1 = torch.zeros(E + 1, dtype=torch.int64, device=device)
    counts_E1.scatter_add_(0, key_P, torch.ones_like(key_P))
    counts_E = counts_E1[:E]
    pad_cnt_E = (counts_E + block_m - 1) // block_m * block_m
    pad_end_E = torch.cumsum(pad_cnt_E, 0)
    pad_off_E = pad_end_E - pad_cnt_E
    start_E1 = torch.cumsum(counts_E1, 0) - counts_E1  # unpadded start of each expert's run

    order_P = torch.argsort(key_P, stable=True)
    skey_P = key_P[order_P]
    rank_P = torch.arange(P, device=device) - start_E1[skey_P]
    R = worst_case_rows(P, E, block_m)
    pad_off_E1 = torch.cat([pad_off_E, pad_off_E.new_full((1,), R)])  # dropped pairs -> dummy row R
    dest_P = torch.where(skey_P < E, pad_off_E1[skey_P] + rank_P, torch.full_like(rank_P, R))
    sorted_ids = torch.full((R + 1,), P, dtype=torch.int64, device=device)
    sorted_ids.scatter_(0, dest_P, order_P)  # valid destinations are distinct; row R is scratch
    sorted_ids_R = sorted_ids[:R]

    block_start_B = torch.arange(0, R, block_m, device=device)
    block_expert_B = torch.searchsorted(pad_end_E, block_start_B, right=True)
    block_expert_B = torch.where(block_expert_B < E, block_expert_B, torch.full_like(block_expert_B, -1))
    return AlignedPairs(sorted_ids_R, block_expert_B.to(torch.int32).contiguous(),
                        pad_off_E.to(torch.int32).contiguous(), pad_cnt_E.to(torch.int32).contiguous(),
                        counts_E, block_m, R)
