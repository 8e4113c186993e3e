"""A model one decoder layer at a time, on the model's own modules (model/llama.py's DecoderLayer, RMSNorm,
Rotary), so calibration and --verify compute exactly what training computes (biases, head widths, rotary
scaling, tied embeddings included) while only one layer's weights are in memory.

    stream = LayerStream(reader)                 # reader: .config, .get(canonical name) (formats/)
    x_BSD = stream.embed(tokens_BS)
    for i in range(L): x_BSD = stream.layer(i)(x_BSD, *stream.rope(S))
    logits_BSV = stream.head(x_BSD)

`capture_mlp_input(layer)` records the down-projection input h = silu(w1 x) * (w3 x) [B, S, F] of a dense layer
(the activations co-activation and gradient importance are built from).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, MoEConfig
from ..model.layers import RMSNorm, Rotary
from ..model.llama import DecoderLayer
from ..parallel import ParallelState


def build_layer(i: int, model: ModelConfig, moe: MoEConfig, get: Callable[[str], torch.Tensor],
                dtype: torch.dtype = torch.float32) -> DecoderLayer:
    """Decoder layer i (single process, eval, no gradients for its parameters) with weights from `get`."""
    layer = DecoderLayer(i, model, moe, ParallelState()).to(dtype).eval()
    prefix = f"layers.{i}."
    state = {k: get(prefix + k).to(dtype) for k in layer.state_dict()}
    layer.load_state_dict(state, strict=True)
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer


class LayerStream:
    def __init__(self, reader, moe: Optional[MoEConfig] = None, dtype: torch.dtype = torch.float32,
                 config: Optional[ModelConfig] = None):
        self.reader, self.cfg, self.moe, self.dtype = reader, config or reader.config, moe or MoEConfig(), dtype
        self.rotary = Rotary(self.cfg)
        self._embed: Optional[torch.Tensor] = None

    def rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary(seq_len, torch.device("cpu"))

    def _embedding(self) -> torch.Tensor:
        if self._embed is None:
            self._embed = self.reader.get("embed.weight").to(self.dtype)
        return self._embed

    def embed(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens_BS, self._embedding())

    def layer(self, i: int) -> DecoderLayer:
        return build_layer(i, self.cfg, self.moe, self.reader.get, self.dtype)

    def final_norm(self, x_BSD: torch.Tensor) -> torch.Tensor:
        norm = RMSNorm(self.cfg.hidden_size, self.cfg.norm_eps).to(self.dtype)
        with torch.no_grad():
            norm.weight.copy_(self.reader.get("norm.weight"))
        return norm(x_BSD)

    def head(self, x_BSD: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head (the embedding itself when tied): logits [B, S, V]."""
        w = self._embedding() if self.cfg.tie_embeddings else self.reader.get("lm_head.weight").to(self.dtype)
        return F.linear(self.final_norm(x_BSD), w)

    def release(self) -> None:
        self._embed = None
        if hasattr(self.reader, "release"):
            self.reader.release()


@contextmanager
def capture_mlp_input(layer: DecoderLayer, on_h: Callable[[torch.Tensor], None]):
    """Call on_h(h_BSF) with the down-projection input of a dense layer's MLP at every forward."""
    def pre_hook(_module: nn.Module, args):
        on_h(args[0])

    handle = layer.mlp.w2.register_forward_pre_hook(pre_hook)
    try:
        yield layer
    finally:
        handle.remove()
