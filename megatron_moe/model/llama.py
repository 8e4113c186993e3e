"""The LLaMA decoder (dense or MoE MLPs), tensor/sequence parallel.

    model = build_model(cfg, ps)                 # cfg: megatron_moe.config.Config (model + moe used)
    logits_BSV = model(input_ids_BS)             # full-vocabulary logits (gathered over TP)
    loss, per_seq_B = model.loss(input_ids_BS, labels_BS)   # mean token loss, vocab-parallel cross-entropy

Under pipeline parallelism (ps.pp_size > 1) each rank builds one stage: its range of decoder layers (keyed by
their global index, so parameter names stay `layers.{i}.…`), the embedding on the first stage, the final norm and
LM head on the last, and runs `stage_forward` (training/pipeline.py drives the stages).
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


class LayerStack(nn.ModuleDict):
    """Decoder layers keyed by their global index: parameter names are `layers.{i}.…` whichever pipeline stage
    holds layer i. Iterates over the layers in order; `stack[i]` is global layer i."""

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i) -> nn.Module:
        return self._modules[str(i)]


def _as_forwarded(layer: DecoderLayer):
    """The layer as recompute re-runs it in backward: with the router-noise context of its forward (under
    pipeline parallelism later micro-batches' forwards set their own context before this backward runs)."""
    mlp = layer.mlp
    ctx = getattr(mlp, "noise_context", None)

    def run(*args):
        if ctx is not None:
            mlp.noise_context = ctx
        return layer(*args)
    return run


class LlamaModel(nn.Module):
    def __init__(self, model_cfg: ModelConfig, moe_cfg: MoEConfig, ps: ParallelState, recompute: bool = False,
                 layer_ids: Optional[range] = None):
        super().__init__()
        self.cfg, self.moe_cfg, self.ps, self.recompute = model_cfg, moe_cfg, ps, recompute
        layer_ids = range(model_cfg.num_layers) if layer_ids is None else layer_ids
        self.is_first, self.is_last = layer_ids.start == 0, layer_ids.stop == model_cfg.num_layers
        self.embed = vocab_embedding(model_cfg.vocab_size, model_cfg.hidden_size, ps) if self.is_first else None
        self.layers = LayerStack({str(i): DecoderLayer(i, model_cfg, moe_cfg, ps) for i in layer_ids})
        self.norm = RMSNorm(model_cfg.hidden_size, model_cfg.norm_eps, sequence_parallel=ps.sp) if self.is_last else None
        # tied: the LM head is embed.weight itself (no lm_head parameter; one tensor in checkpoints and grads)
        untied = self.is_last and not model_cfg.tie_embeddings
        self.lm_head = column_linear(model_cfg.hidden_size, model_cfg.vocab_size, ps) if untied else None
        self.rotary = Rotary(model_cfg)

    # ---------------------------------------------------------------------------------------- core
    def embed_tokens(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, S_l, D] (sequence-sharded under SP)."""
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
        return x_BSD

    def decoder(self, x_BSD: torch.Tensor) -> torch.Tensor:
        """This rank's decoder layers (all of them, or its pipeline stage's); [B, S_l, D] -> [B, S_l, D]."""
        S = x_BSD.shape[1] * (self.ps.tp_size if self.ps.sp else 1)
        cos_Sh, sin_Sh = self.rotary(S, x_BSD.device)
        for layer in self.layers:
            if self.recompute and self.training:
                x_BSD = checkpoint(_as_forwarded(layer), x_BSD, cos_Sh, sin_Sh, use_reentrant=False)
            else:
                x_BSD = layer(x_BSD, cos_Sh, sin_Sh)
        return x_BSD

    def head(self, x_BSD: torch.Tensor) -> torch.Tensor:
        """Final norm and this rank's vocabulary shard of the logits: [B, S_l, D] -> [B, S, V/tp]."""
        h_BSD = self.norm(x_BSD)
        if self.ps.sp:
            h_BSD = gather_seq(h_BSD, self.ps.tp_group, dim=1)
        if self.lm_head is None:
            return tied_logits(self.embed, h_BSD, self.ps)
        return column(self.lm_head, h_BSD, self.ps)

    def stage_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pipeline stage: token ids [B, S] (first stage) or the previous stage's hidden states [B, S_l, D]
        in; hidden states [B, S_l, D] or, on the last stage, local logits [B, S, V/tp] out."""
        x_BSD = self.embed_tokens(x) if self.is_first else x
        x_BSD = self.decoder(x_BSD)
        return self.head(x_BSD) if self.is_last else x_BSD

    def hidden(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states; [B, S_l, D] (sequence-sharded under SP). Whole model only."""
        return self.norm(self.decoder(self.embed_tokens(input_ids_BS)))

    def local_logits(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Logits for this rank's vocabulary shard, [B, S, V/tp]. Whole model only (pp = 1)."""
        if not (self.is_first and self.is_last):
            raise RuntimeError("LlamaModel.local_logits needs the whole model; a pipeline stage runs stage_forward")
        return self.stage_forward(input_ids_BS)

    def forward(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits [B, S, V]."""
        logits = self.local_logits(input_ids_BS)
        if self.ps.tp_size > 1:
            logits = gather_seq(logits, self.ps.tp_group, dim=-1)
        return logits

    def loss(self, input_ids_BS: torch.Tensor, labels_BS: torch.Tensor,
             loss_mask_BS: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token loss and the per-sequence mean loss [B] (vocab-parallel cross-entropy over TP)."""
        return lm_loss(self.local_logits(input_ids_BS).float(), labels_BS, self.ps, loss_mask_BS)

    def moe_layers(self) -> list:
        return [layer.mlp for layer in self.layers if not isinstance(layer.mlp, DenseMLP)]


def lm_loss(logits_BSV: torch.Tensor, labels_BS: torch.Tensor, ps: ParallelState,
            loss_mask_BS: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss and per-sequence mean loss [B] from this rank's vocabulary shard of the logits."""
    tok_BS = token_cross_entropy(logits_BSV, labels_BS, ps)
    mask = torch.ones_like(tok_BS) if loss_mask_BS is None else loss_mask_BS.to(tok_BS.dtype)
    per_seq_B = (tok_BS * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (tok_BS * mask).sum() / mask.sum().clamp(min=1), per_seq_B


def build_model(cfg: Config, ps: Optional[ParallelState] = None, recompute: Optional[bool] = None) -> LlamaModel:
    """Build the model for this rank (parameters uninitialised; see model.init.init_weights / checkpoint load):
    the whole model, or under pipeline parallelism (ps.pp_size > 1) this rank's stage of cfg.parallel's layout."""
    ps = ps or ParallelState()
    rec = cfg.train.recompute if recompute is None else recompute
    layer_ids = cfg.parallel.stage_range(cfg.model.num_layers, ps.pp_rank) if ps.pp_size > 1 else None
    return LlamaModel(cfg.model, cfg.moe, ps, recompute=rec, layer_ids=layer_ids)
