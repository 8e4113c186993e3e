"""Tensor-parallel linears and embedding from megatron-core, with the sequence-parallel path done by our
device-agnostic collectives.

Without sequence parallelism the megatron-core layers run their own forward (copy-to / all-reduce regions).
With it, megatron-core's all-gather / reduce-scatter would allocate on CUDA, so `column()` expects the input
already gathered (by `parallel.gather_seq`, whose backward reduce-scatters) and `row()` reduce-scatters the
partial output itself. A world of one uses torch.nn layers with the same parameter names and shapes, so
single-process inference needs no process group.

Biases: a column-parallel bias is split over TP like the weight's rows (Split(0)); a row-parallel bias is
replicated and added once, after the reduction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel import ParallelState, copy_to_group, reduce_scatter_seq
from .sharding import Split, declare


def _mp_config(ps: ParallelState):
    from megatron.core.model_parallel_config import ModelParallelConfig

    # perform_initialization=False: init.py initialises every parameter from its canonical global tensor.
    return ModelParallelConfig(tensor_model_parallel_size=ps.tp_size, sequence_parallel=False,
                               use_cpu_initialization=True, perform_initialization=False,
                               params_dtype=torch.float32)


def column_linear(in_features: int, out_features: int, ps: ParallelState, bias: bool = False) -> nn.Module:
    """W [out, in] (and b [out]), split along out over TP."""
    if ps.tp_size == 1:
        layer = nn.Linear(in_features, out_features, bias=bias)
    else:
        from megatron.core.tensor_parallel import ColumnParallelLinear

        layer = ColumnParallelLinear(in_features, out_features, config=_mp_config(ps), init_method=nn.init.zeros_,
                                     bias=bias, gather_output=False, skip_bias_add=False, tp_group=ps.tp_group,
                                     disable_grad_reduce=ps.sp)
    declare(layer, "weight", Split("tp", 0, ps.tp_size, ps.tp_rank))
    if bias:
        declare(layer, "bias", Split("tp", 0, ps.tp_size, ps.tp_rank))
    return layer


def row_linear(in_features: int, out_features: int, ps: ParallelState, bias: bool = False) -> nn.Module:
    """W [out, in], split along in over TP; the output is summed over TP, then the (replicated) bias added."""
    if ps.tp_size == 1:
        layer = nn.Linear(in_features, out_features, bias=bias)
    else:
        from megatron.core.tensor_parallel import RowParallelLinear

        layer = RowParallelLinear(in_features, out_features, config=_mp_config(ps), init_method=nn.init.zeros_,
                                  bias=bias, input_is_parallel=True, skip_bias_add=True, tp_group=ps.tp_group)
    declare(layer, "weight", Split("tp", 1, ps.tp_size, ps.tp_rank))
    if bias:
        declare(layer, "bias", sequence_parallel=ps.sp)  # under SP each TP rank adds it to different tokens
    return layer


def vocab_embedding(vocab: int, dim: int, ps: ParallelState) -> nn.Module:
    if ps.tp_size == 1:
        layer = nn.Embedding(vocab, dim)
    else:
        from megatron.core.tensor_parallel import VocabParallelEmbedding

        layer = VocabParallelEmbedding(vocab, dim, init_method=nn.init.zeros_, config=_mp_config(ps),
                                       tp_group=ps.tp_group)
    declare(layer, "weight", Split("tp", 0, ps.tp_size, ps.tp_rank))
    return layer


def column(layer: nn.Module, x: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """Local output shard of a column-parallel linear. Under SP, `x` must already be sequence-gathered."""
    if ps.tp_size == 1:
        return layer(x)
    if ps.sp:
        return F.linear(x, layer.weight, layer.bias)
    return layer(x)[0]


def row(layer: nn.Module, h: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """Full output of a row-parallel linear: all-reduced over TP, or reduce-scattered along the sequence (dim 1)
    under SP; then its bias, if any."""
    if ps.tp_size == 1:
        return layer(h)
    if ps.sp:
        y = reduce_scatter_seq(F.linear(h, layer.weight), ps.tp_group, dim=1)
    else:
        y = layer(h)[0]
    return y if layer.bias is None else y + layer.bias


def tied_logits(embed: nn.Module, h_BSD: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """Local vocabulary shard of h @ Eᵀ with the embedding's own weight (tied LM head): the embedding is split
    over TP along the vocabulary exactly as a column-parallel LM head would be. Without SP the input is
    replicated over TP, so its gradient is all-reduced (`copy_to_group`); under SP it arrives gathered by
    `gather_seq`, whose backward already reduce-scatters."""
    if ps.tp_size > 1 and not ps.sp:
        h_BSD = copy_to_group(h_BSD, ps.tp_group)
    return F.linear(h_BSD, embed.weight)


__all__ = ["column_linear", "row_linear", "vocab_embedding", "column", "row", "tied_logits"]


def token_cross_entropy(logits_BSV: torch.Tensor, labels_BS: torch.Tensor, ps: ParallelState) -> torch.Tensor:
    """Per-token next-token loss [B, S] from logits whose vocab is split over TP (the full vocab when tp_size 1).
    Over TP it is megatron-core's vocab-parallel cross-entropy, which reads megatron-core's global TP group:
    `parallel.init_parallel` creates it with the same ranks as `ps.tp_group`."""
    if ps.tp_size == 1:
        return F.cross_entropy(logits_BSV.flatten(0, 1), labels_BS.flatten(), reduction="none").view_as(labels_BS)
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    return vocab_parallel_cross_entropy(logits_BSV, labels_BS)
