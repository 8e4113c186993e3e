"""The LLaMA decoder (dense or MoE MLPs), tensor/sequence parallel.

    model = build_model(cfg, ps)                 # cfg: megatron_moe.config.Config (model + moe used)
    logits_BSV = model(input_ids_BS)             # full-vocabulary logits (gathered over TP)
    loss, per_seq_B = model.loss(input_ids_BS, labels_BS)   # mean token loss, vocab-parallel cross-entropy

Parameter names are the canonical checkpoint names (docs/checkpoint_format.md).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import Config, ModelConfig, MoEConfig
from ..parallel import ParallelState, gather_seq, scatter_seq
from .layers import Attention, DenseMLP, RMSNorm, Rotary
from .tp import column, column_linear, tied_logits, token_cross_entropy, vocab_embedding


def build_mlp(layer_idx: int, model_cfg: ModelConfig, moe_cfg: MoEConfig, ps: ParallelState) -> nn.Module:
    if moe_cfg.is_moe_layer(layer_idx):
        from .moe import MoELayer

        return MoELayer(model_cfg, moe_cfg, ps, layer_idx)
    return DenseMLP(model_cfg.hidden_size, model_cfg.intermediate_size, ps)


class DecoderLayer(nn.Module):
    def __init__(self, layer_idx: int, model_cfg: ModelConfig, moe_cfg: MoEConfig, ps: ParallelState):
        super().__init__()
        self.attn_norm = RMSNorm(model_cfg.hidden_size, model_cfg.norm_eps, sequence_parallel=ps.sp)
        self.attn = Attention(model_cfg, ps)
        self.mlp_norm = RMSNorm(model_cfg.hidden_size, model_cfg.norm_eps, sequence_parallel=ps.sp)
        self.mlp = build_mlp(layer_idx, model_cfg, moe_cfg, ps)

    def forward(self, x_BSD: torch.Tensor, cos_Sh: torch.Tensor, sin_Sh: torch.Tensor) -> torch.Tensor:
        x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), cos_Sh, sin_Sh)
        return x_BSD + self.mlp(self.mlp_norm(x_BSD))


class LlamaModel(nn.Module):
    def __init__(self, model_cfg: ModelConfig, moe_cfg: MoEConfig, ps: ParallelState, recompute: bool = False):
        super().__init__()
        self.cfg, self.moe_cfg, self.ps, self.recompute = model_cfg, moe_cfg, ps, recompute
        self.embed = vocab_embedding(model_cfg.vocab_size, model_cfg.hidden_size, ps)
        self.layers = nn.ModuleList(DecoderLayer(i, model_cfg, moe_cfg, ps) for i in range(model_cfg.num_layers))
        self.norm = RMSNorm(model_cfg.hidden_size, model_cfg.norm_eps, sequence_parallel=ps.sp)
        # tied: the LM head is embed.weight itself (no lm_head parameter; one tensor in checkpoints and grads)
        self.lm_head = None if model_cfg.tie_embeddings else column_linear(model_cfg.hidden_size,
                                                                           model_cfg.vocab_size, ps)
        self.rotary = Rotary(model_cfg)

    # ---------------------------------------------------------------------------------------- core
    def hidden(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states; [B, S_l, D] (sequence-sharded under SP)."""
        ps = self.ps
        S = input_ids_BS.shape[1]
        if S > self.cfg.seq_limit:
            what = "the sliding window" if self.cfg.seq_limit < self.cfg.max_seq_len else "model.max_seq_len"
            raise ValueError(f"sequence length {S} exceeds {what} ({self.cfg.seq_limit})")
        if ps.sp and S % ps.tp_size:
            raise ValueError(f"sequence parallel: sequence length {S} is not divisible by tp={ps.tp_size}")
        x_BSD = self.embed(input_ids_BS)
        if ps.sp:
            x_BSD = scatter_seq(x_BSD, ps.tp_group, dim=1)  # [B, S, D] -> [B, S_l, D]
        cos_Sh, sin_Sh = self.rotary(S, input_ids_BS.device)
        for layer in self.layers:
            if self.recompute and self.training:
                x_BSD = checkpoint(layer, x_BSD, cos_Sh, sin_Sh, use_reentrant=False)
            else:
                x_BSD = layer(x_BSD, cos_Sh, sin_Sh)
        return self.norm(x_BSD)

    def local_logits(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Logits for this rank's vocabulary shard, [B, S, V/tp]."""
        h_BSD = self.hidden(input_ids_BS)
        if self.ps.sp:
            h_BSD = gather_seq(h_BSD, self.ps.tp_group, dim=1)
        if self.lm_head is None:
            return tied_logits(self.embed, h_BSD, self.ps)
        return column(self.lm_head, h_BSD, self.ps)

    def forward(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits [B, S, V]."""
        logits = self.local_logits(input_ids_BS)
        if self.ps.tp_size > 1:
            logits = gather_seq(logits, self.ps.tp_group, dim=-1)
        return logits

    def loss(self, input_ids_BS: torch.Tensor, labels_BS: torch.Tensor,
             loss_mask_BS: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token loss and the per-sequence mean loss [B] (vocab-parallel cross-entropy over TP)."""
        logits_BSV = self.local_logits(input_ids_BS).float()
        tok_BS = token_cross_entropy(logits_BSV, labels_BS, self.ps)
        mask = torch.ones_like(tok_BS) if loss_mask_BS is None else loss_mask_BS.to(tok_BS.dtype)
        per_seq_B = (tok_BS * mask).sum(1) / mask.sum(1).clamp(min=1)
        return (tok_BS * mask).sum() / mask.sum().clamp(min=1), per_seq_B

    def moe_layers(self) -> list:
        return [layer.mlp for layer in self.layers if not isinstance(layer.mlp, DenseMLP)]


def build_model(cfg: Config, ps: Optional[ParallelState] = None, recompute: Optional[bool] = None) -> LlamaModel:
    """Build the model for this rank (parameters uninitialised; see model.init.init_weights / checkpoint load)."""
    ps = ps or ParallelState()
    rec = cfg.train.recompute if recompute is None else recompute
    return LlamaModel(cfg.model, cfg.moe, ps, recompute=rec)
