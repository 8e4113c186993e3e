"""Calibration statistics of a dense LLaMA for the data-driven construction methods, streamed layer by layer.

Only one decoder layer's weights are in memory at a time (construct/layerwise.py: the model's own decoder layer,
loaded layer by layer): the calibration hidden states [B, S, D] are carried from layer to layer (the gradient
pass also keeps each layer's input to run the backward layer by layer in reverse, recomputing the layer).

    tokens_BS = load_calibration_tokens(["data.jsonl"], num_tokens=8192, seq_len=512, tokenizer="tok.model")
    for i, A_FF in coactivation_stream(reader, tokens_BS, fn="abs"): ...
    importance_LCF, doc_cluster_B = gradient_importance(reader, tokens_BS, num_clusters=E, seed=1227)

Calibration data: JSONL (one document per line: {"text": ...} or pre-tokenised {"input_ids": [...]}),
plain text files (one document per file), or megatron indexed datasets (a prefix with .bin/.idx). Each
document starts with BOS; documents are packed into rows of `seq_len` tokens. Nothing is downloaded.

Legend: B calibration sequences, S sequence length, D hidden, F dense FFN width, C clusters, L layers.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError
from .layerwise import LayerStream, capture_mlp_input
from .partition import coactivation_update, importance_update
from ..structured import parse_json

log = logging.getLogger(__name__)


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
                rec = parse_json(line, f"{path}:{lineno}", expect=None, error=CalibrationError)
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


# ------------------------------------------------------------------------------------------- helpers
def _chunks(B: int, batch: int) -> list[slice]:
    return [slice(s, min(s + batch, B)) for s in range(0, B, batch)]


def _run(layer, x_BSD: torch.Tensor, cos_sin, batch_size: int) -> torch.Tensor:
    return torch.cat([layer(x_BSD[b], *cos_sin) for b in _chunks(x_BSD.shape[0], batch_size)])


@torch.no_grad()
def dense_logits(reader, tokens_BS: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Logits of the dense model, one layer in memory at a time (construct/layerwise.py)."""
    stream = LayerStream(reader)
    cos_sin = stream.rope(tokens_BS.shape[1])
    x = stream.embed(tokens_BS)
    for i in range(stream.cfg.num_layers):
        x = _run(stream.layer(i), x, cos_sin, batch_size)
    return stream.head(x)


# --------------------------------------------------------------------------------- co-activation
@torch.no_grad()
def coactivation_stream(reader, tokens_BS: torch.Tensor, fn: str = "abs", batch_size: int = 4,
                        progress: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (layer, A_FF) layer by layer: A += clamp(f(h)^T f(h), max=1) per batch of `batch_size` sequences."""
    stream = LayerStream(reader)
    cfg = stream.cfg
    cos_sin = stream.rope(tokens_BS.shape[1])
    x = stream.embed(tokens_BS)
    for i in tqdm(range(cfg.num_layers), desc="co-activation", unit="layer", disable=not progress):
        A_FF = torch.zeros(cfg.intermediate_size, cfg.intermediate_size)
        with capture_mlp_input(stream.layer(i), lambda h: coactivation_update(A_FF, h.reshape(-1, h.shape[-1]), fn)) \
                as layer:
            x = _run(layer, x, cos_sin, batch_size)
        stream.release()
        yield i, A_FF


# ------------------------------------------------------------------------------------- MLP inputs
@torch.no_grad()
def mlp_inputs(reader, tokens_BS: torch.Tensor, batch_size: int = 4, progress: bool = True,
               max_tokens: int = 8192, seed: int = 0) -> dict[int, torch.Tensor]:
    """{layer: x [N, D]}: the inputs of every layer's MLP (after its RMSNorm) on the calibration tokens, at most
    `max_tokens` of them (a seeded sample, the same tokens in every layer); for router initialisation."""
    stream = LayerStream(reader)
    cfg = stream.cfg
    B, S = tokens_BS.shape
    keep = torch.randperm(B * S, generator=torch.Generator().manual_seed(seed))[:max_tokens]
    cos_sin = stream.rope(S)
    x = stream.embed(tokens_BS)
    out = {}
    for i in tqdm(range(cfg.num_layers), desc="router init: MLP inputs", unit="layer", disable=not progress):
        seen = []
        layer = stream.layer(i)
        handle = layer.mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            x = _run(layer, x, cos_sin, batch_size)
        finally:
            handle.remove()
        out[i] = torch.cat(seen).reshape(B * S, -1)[keep]
        stream.release()
    return out


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
    hidden state. Layer by layer: a forward pass keeps each layer's input, then the backward runs in reverse,
    recomputing each layer. Returns (importance, cluster of each sequence [B])."""
    stream = LayerStream(reader)
    cfg = stream.cfg
    B, S = tokens_BS.shape
    cos_sin = stream.rope(S)
    chunks = _chunks(B, batch_size)
    inputs = []
    with torch.no_grad():
        x = stream.embed(tokens_BS)
        for i in tqdm(range(cfg.num_layers), desc="gradient: forward", unit="layer", disable=not progress):
            inputs.append(x)
            x = _run(stream.layer(i), x, cos_sin, batch_size)
            stream.release()
    with torch.no_grad():  # a sequence's embedding: its mean final-norm hidden state
        emb_BD = torch.cat([stream.final_norm(x[b]).mean(1) for b in chunks])
    cluster_B = cluster_documents(emb_BD, num_clusters, seed)
    grad = torch.empty_like(x)
    for b in chunks:
        xb = x[b].detach().requires_grad_(True)
        logits = stream.head(xb)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens_BS[b, 1:].flatten(), reduction="sum")
        grad[b] = torch.autograd.grad(loss, xb)[0]
    importance = torch.zeros(cfg.num_layers, num_clusters, cfg.intermediate_size, dtype=torch.float64)
    cluster_T_all = cluster_B[:, None].expand(B, S)
    for i in tqdm(reversed(range(cfg.num_layers)), total=cfg.num_layers, desc="gradient: backward", unit="layer",
                  disable=not progress):
        saved = {}

        def keep(h):
            h.retain_grad()
            saved["h"] = h

        new_grad = torch.empty_like(grad)
        with capture_mlp_input(stream.layer(i), keep) as layer:
            for b in chunks:
                xb = inputs[i][b].detach().requires_grad_(True)
                layer(xb, *cos_sin).backward(grad[b])
                h = saved["h"]
                importance_update(importance[i], h.reshape(-1, h.shape[-1]), h.grad.reshape(-1, h.shape[-1]),
                                  cluster_T_all[b].reshape(-1))
                new_grad[b] = xb.grad
        stream.release()
        grad = new_grad
        inputs[i] = None
    tokens_C = torch.bincount(cluster_B, minlength=num_clusters).double() * S
    return importance / tokens_C[None, :, None], cluster_B

