"""Slice dense FFN weights into stacked expert weights given an assignment.

Legend: F_d dense FFN width, D hidden, E experts, F neurons per expert, Fs shared neurons.
Expert e owns rows assign[e] of W_gate (w1) and W_up (w3) and the same columns of W_down (w2).
"""
from __future__ import annotations

import torch


def build_expert_weights(w1_FD: torch.Tensor, w3_FD: torch.Tensor, w2_DF: torch.Tensor,
                         assign_EF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w1_EFD, w3_EFD, w2_EDF) for the experts; contiguous copies, each weight read and written once (w2's
    columns are gathered per expert straight into the output: a gather to [D, E, F] and a permute would copy
    the largest matrix twice)."""
    idx = assign_EF.to(w1_FD.device)
    E, F = idx.shape
    w1_EFD = w1_FD.index_select(0, idx.reshape(-1)).view(E, F, -1)
    w3_EFD = w3_FD.index_select(0, idx.reshape(-1)).view(E, F, -1)
    w2_EDF = w2_DF.new_empty(E, w2_DF.shape[0], F)
    for e in range(E):
        torch.index_select(w2_DF, 1, idx[e], out=w2_EDF[e])
    return w1_EFD, w3_EFD, w2_EDF


def build_shared_weights(w1_FD: torch.Tensor, w3_FD: torch.Tensor, w2_DF: torch.Tensor,
                         shared_S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w1 [Fs, D], w3 [Fs, D], w2 [D, Fs]) of the concatenated always-on shared experts."""
    idx = shared_S.to(w1_FD.device)
    return w1_FD[idx].contiguous(), w3_FD[idx].contiguous(), w2_DF[:, idx].contiguous()


def swiglu_ffn(x_TD: torch.Tensor, w1_FD: torch.Tensor, w3_FD: torch.Tensor, w2_DF: torch.Tensor) -> torch.Tensor:
    """Dense SwiGLU FFN: W_down(SiLU(W_gate x) * (W_up x))."""
    return (torch.nn.functional.silu(x_TD @ w1_FD.T) * (x_TD @ w3_FD.T)) @ w2_DF.T


def experts_sum(x_TD: torch.Tensor, w1_EFD: torch.Tensor, w3_EFD: torch.Tensor, w2_EDF: torch.Tensor,
                weight: float = 1.0) -> torch.Tensor:
    """Sum over all experts of weight * expert(x): the MoE layer with every expert selected."""
    h_ETF = torch.nn.functional.silu(torch.einsum("td,efd->etf", x_TD, w1_EFD)) * \
        torch.einsum("td,efd->etf", x_TD, w3_EFD)
    return weight * torch.einsum("etf,edf->td", h_ETF, w2_EDF)
