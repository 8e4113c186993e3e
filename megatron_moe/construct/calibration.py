"""Calibration statistics of a dense LLaMA for the data-driven construction methods, streamed layer by layer.

Only one decoder layer's weights are in memory at a time: the calibration hidden states [B, S, D] are
carried from layer to layer (the gradient pass also keeps each layer's input to run the backward layer
by layer in reverse, recomputing the layer's forward).

    tokens_BS = load_calibration_tokens(["data.jsonl"], num_tokens=8192, seq_len=512, tokenizer="tok.model")
    for i, A_FF in coactivation_stream(reader, tokens_BS, fn="abs"): ...
    importance_LCF, doc_cluster_B = gradient_importance(reader, tokens_BS, num_clusters=E, seed=1227)

Calibration data: JSONL (one document per line: {"text": ...} or pre-tokenised {"input_ids": [...]}),
plain text files (one document per file), or megatron indexed datasets (a prefix with .bin/.idx). Each
document starts with BOS; documents are packed into rows of `seq_len` tokens. Nothing is downloaded.

Legend: B calibration sequences, S sequence length, D hidden, F dense FFN width, C clusters, L layers.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ModelConfig
from ..errors import UserError
from .partition import coactivation_update, importance_update

log = logging.getLogger(__name__)
LAYER_KEYS = ("attn_norm.weight", "attn.wq.weight", "attn.wk.weight", "attn.wv.weight", "attn.wo.weight",
              "mlp_norm.weight", "mlp.w1.weight", "mlp.w3.weight", "mlp.w2.weight")


class CalibrationError(UserError):
    """Calibration data missing, unreadable or too small; one line naming the file or the numbers."""


# ------------------------------------------------------------------------------------------- data
def _documents(path: Path, tokenizer) -> Iterator[list[int]]:
    def encode(text: str) -> list[int]:
        if tokenizer is None:
            raise CalibrationError(f"{path}: text calibration data needs a tokenizer (--tokenizer, or tokenizer "
                                   f"files in the dense checkpoint directory)")
        return tokenizer.encode_document(text)

    if path.suffix in (".bin", ".idx") or (not path.exists() and Path(str(path) + ".idx").exists()):
        from ..data import open_indexed

        ds = open_indexed(str(path.with_suffix("")) if path.suffix in (".bin", ".idx") else str(path))
        for i in range(len(ds)):
            yield [int(t) for t in ds[i]]
        return
    if not path.is_file():
        raise CalibrationError(f"calibration data {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        with path.open() as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise CalibrationError(f"{path}:{lineno}: not a JSON line") from None
                ids = rec.get("input_ids", rec.get("tokens")) if isinstance(rec, dict) else None
                if ids is not None:
                    yield [int(t) for t in ids]
                elif isinstance(rec, dict) and isinstance(rec.get("text"), str):
                    yield encode(rec["text"])
                else:
                    raise CalibrationError(f"{path}:{lineno}: expected a 'text' or 'input_ids' field")
        return
    yield encode(path.read_text(encoding="utf-8", errors="replace"))


def load_calibration_tokens(paths: Sequence[str | Path], num_tokens: int, seq_len: int,
                            tokenizer: Optional[str | Path] = None, vocab_size: Optional[int] = None) -> torch.Tensor:
    """Pack calibration documents into [B, seq_len] token ids, B = num_tokens // seq_len (fewer when the
    data is shorter, at least one row)."""
    if not paths:
        raise CalibrationError("no calibration data given (--calib-data)")
    tok = None
    if tokenizer is not None:
        from ..data import load_tokenizer

        tok = load_tokenizer(str(tokenizer))
    rows = max(1, num_tokens // seq_len)
    need = rows * seq_len
    stream: list[int] = []
    for p in paths:
        for doc in _documents(Path(p), tok):
            stream.extend(doc)
            if len(stream) >= need:
                break
        if len(stream) >= need:
            break
    if len(stream) < seq_len:
        raise CalibrationError(f"calibration data has {len(stream)} tokens, fewer than one sequence of {seq_len}")
    B = min(rows, len(stream) // seq_len)
    out = torch.tensor(stream[: B * seq_len], dtype=torch.long).view(B, seq_len)
    if vocab_size is not None and int(out.max()) >= vocab_size:
        raise CalibrationError(f"calibration token id {int(out.max())} is outside the model vocabulary ({vocab_size})")
    return out


# ---------------------------------------------------------------------------------- layer forward
def load_layer(reader, i: int, dtype: torch.dtype = torch.float32, keys: Sequence[str] = LAYER_KEYS) -> dict[str, torch.Tensor]:
    return {k: reader.get(f"layers.{i}.{k}").to(dtype) for k in keys}


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x_BHSh: torch.Tensor, cos_Sh: torch.Tensor, sin_Sh: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHSh.chunk(2, dim=-1)
    return x_BHSh * cos_Sh + torch.cat((-x2, x1), dim=-1) * sin_Sh


def rope_tables(cfg: ModelConfig, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..model.layers import Rotary

    return Rotary(cfg)(seq_len, torch.device("cpu"))


def layer_forward(x_BSD: torch.Tensor, W: dict, cfg: ModelConfig, cos_Sh: torch.Tensor, sin_Sh: torch.Tensor,
                  on_h: Optional[Callable[[torch.Tensor], None]] = None,
                  mlp: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """One LLaMA decoder layer from canonical weights; `on_h` sees the down-projection input h [B, S, F];
    `mlp` (x_TD -> y_TD) replaces the dense FFN (the MoE side of --verify)."""
    B, S, _ = x_BSD.shape
    H, G, h = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    a = _rms(x_BSD, W["attn_norm.weight"], cfg.norm_eps)
    q = (a @ W["attn.wq.weight"].T).view(B, S, H, h).transpose(1, 2)
    k = (a @ W["attn.wk.weight"].T).view(B, S, G, h).transpose(1, 2)
    v = (a @ W["attn.wv.weight"].T).view(B, S, G, h).transpose(1, 2)
    o = F.scaled_dot_product_attention(_rope(q, cos_Sh, sin_Sh), _rope(k, cos_Sh, sin_Sh), v, is_causal=True,
                                       enable_gqa=G != H)
    x_BSD = x_BSD + o.transpose(1, 2).reshape(B, S, H * h) @ W["attn.wo.weight"].T
    m = _rms(x_BSD, W["mlp_norm.weight"], cfg.norm_eps)
    if mlp is not None:
        return x_BSD + mlp(m.reshape(B * S, -1)).view(B, S, -1)
    h_BSF = F.silu(m @ W["mlp.w1.weight"].T) * (m @ W["mlp.w3.weight"].T)
    if on_h is not None:
        on_h(h_BSF)
    return x_BSD + h_BSF @ W["mlp.w2.weight"].T


def _chunks(B: int, batch: int) -> list[slice]:
    return [slice(s, min(s + batch, B)) for s in range(0, B, batch)]


@torch.no_grad()
def dense_logits(reader, tokens_BS: torch.Tensor) -> torch.Tensor:
    """Logits of the dense model by the streamed forward (used by tests and --verify's dense side)."""
    cfg = reader.config
    cos, sin = rope_tables(cfg, tokens_BS.shape[1])
    x = F.embedding(tokens_BS, reader.get("embed.weight").float())
    for i in range(cfg.num_layers):
        x = layer_forward(x, load_layer(reader, i), cfg, cos, sin)
    return _rms(x, reader.get("norm.weight").float(), cfg.norm_eps) @ reader.get("lm_head.weight").float().T


# --------------------------------------------------------------------------------- co-activation
@torch.no_grad()
def coactivation_stream(reader, tokens_BS: torch.Tensor, fn: str = "abs", batch_size: int = 4,
                        progress: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (layer, A_FF) layer by layer: A += clamp(f(h)^T f(h), max=1) per batch of `batch_size` sequences."""
    cfg = reader.config
    cos, sin = rope_tables(cfg, tokens_BS.shape[1])
    x = F.embedding(tokens_BS, reader.get("embed.weight").float())
    for i in tqdm(range(cfg.num_layers), desc="co-activation", unit="layer", disable=not progress):
        W = load_layer(reader, i)
        A_FF = torch.zeros(cfg.intermediate_size, cfg.intermediate_size)
        on_h = lambda h: coactivation_update(A_FF, h.reshape(-1, h.shape[-1]), fn)  # noqa: E731
        x = torch.cat([layer_forward(x[b], W, cfg, cos, sin, on_h) for b in _chunks(x.shape[0], batch_size)])
        del W
        yield i, A_FF


# -------------------------------------------------------------------------------------- gradient
def cluster_documents(emb_BD: torch.Tensor, num_clusters: int, seed: int) -> torch.Tensor:
    """k-means (sklearn, seeded) of L2-normalised document embeddings into C non-empty groups."""
    from sklearn.cluster import KMeans

    B = emb_BD.shape[0]
    if B < num_clusters:
        raise CalibrationError(f"gradient methods need at least num_experts={num_clusters} calibration sequences, "
                               f"got {B}; give more --calib-tokens or a shorter --calib-seq-len")
    x = F.normalize(emb_BD.double(), dim=1).numpy()
    labels = KMeans(n_clusters=num_clusters, n_init=4, random_state=seed).fit(x).labels_
    return torch.as_tensor(labels, dtype=torch.long)


def gradient_importance(reader, tokens_BS: torch.Tensor, num_clusters: int, seed: int = 1227,
                        batch_size: int = 4, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance [L, C, F]: v_i^c = sum over tokens of cluster c of |h_i * dL/dh_i| / #tokens, h the
    down-projection input, L the summed next-token loss; sequences are clustered by their mean final
    hidden state. Returns (importance, cluster of each sequence [B])."""
    cfg = reader.config
    B, S = tokens_BS.shape
    cos, sin = rope_tables(cfg, S)
    chunks = _chunks(B, batch_size)
    inputs = []
    with torch.no_grad():
        x = F.embedding(tokens_BS, reader.get("embed.weight").float())
        for i in tqdm(range(cfg.num_layers), desc="gradient: forward", unit="layer", disable=not progress):
            W = load_layer(reader, i)
            inputs.append(x)
            x = torch.cat([layer_forward(x[b], W, cfg, cos, sin) for b in chunks])
    norm_w, head_w = reader.get("norm.weight").float(), reader.get("lm_head.weight").float()
    with torch.no_grad():
        emb_BD = torch.cat([_rms(x[b], norm_w, cfg.norm_eps).mean(1) for b in chunks])
    cluster_B = cluster_documents(emb_BD, num_clusters, seed)
    grad = torch.empty_like(x)
    for b in chunks:
        xb = x[b].detach().requires_grad_(True)
        logits = _rms(xb, norm_w, cfg.norm_eps) @ head_w.T
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens_BS[b, 1:].flatten(), reduction="sum")
        grad[b] = torch.autograd.grad(loss, xb)[0]
    importance = torch.zeros(cfg.num_layers, num_clusters, cfg.intermediate_size, dtype=torch.float64)
    cluster_T_all = cluster_B[:, None].expand(B, S)
    for i in tqdm(reversed(range(cfg.num_layers)), total=cfg.num_layers, desc="gradient: backward", unit="layer",
                  disable=not progress):
        W = load_layer(reader, i)
        new_grad = torch.empty_like(grad)
        for b in chunks:
            xb = inputs[i][b].detach().requires_grad_(True)
            saved = {}

            def on_h(h, saved=saved):
                h.retain_grad()
                saved["h"] = h

            out = layer_forward(xb, W, cfg, cos, sin, on_h)
            out.backward(grad[b])
            h = saved["h"]
            importance_update(importance[i], h.reshape(-1, h.shape[-1]), h.grad.reshape(-1, h.shape[-1]),
                              cluster_T_all[b].reshape(-1))
            new_grad[b] = xb.grad
        grad = new_grad
        inputs[i] = None
    tokens_C = torch.bincount(cluster_B, minlength=num_clusters).double() * S
    return importance / tokens_C[None, :, None], cluster_B
