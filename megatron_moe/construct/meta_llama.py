"""Read (and, for tests, write) Meta-format LLaMA checkpoints: params.json + consolidated.NN.pth.

Meta splits tensors across model-parallel shards: tok_embeddings along dim 1; wq/wk/wv/w1/w3/output along
dim 0; wo/w2 along dim 1; norms replicated. Its q/k rows interleave rotary pairs, where HF (and we) use the
half-split layout: `meta_to_hf_rows` permutes them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from .hf_llama import expected_shapes

_LAYER_MAP = {"attention_norm.weight": "attn_norm.weight", "ffn_norm.weight": "mlp_norm.weight",
              "attention.wq.weight": "attn.wq.weight", "attention.wk.weight": "attn.wk.weight",
              "attention.wv.weight": "attn.wv.weight", "attention.wo.weight": "attn.wo.weight",
              "feed_forward.w1.weight": "mlp.w1.weight", "feed_forward.w3.weight": "mlp.w3.weight",
              "feed_forward.w2.weight": "mlp.w2.weight"}
_TOP_MAP = {"tok_embeddings.weight": "embed.weight", "norm.weight": "norm.weight", "output.weight": "lm_head.weight"}
_SPLIT_DIM = {"tok_embeddings.weight": 1, "output.weight": 0, "attention.wq.weight": 0, "attention.wk.weight": 0,
              "attention.wv.weight": 0, "attention.wo.weight": 1, "feed_forward.w1.weight": 0,
              "feed_forward.w3.weight": 0, "feed_forward.w2.weight": 1}


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved rotary pairs (Meta) -> half-split (HF) for a q or k projection [n_heads*h, D]."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _meta_name(canonical: str) -> str:
    for meta, ours in _TOP_MAP.items():
        if canonical == ours:
            return meta
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", canonical)
    inv = {v: k for k, v in _LAYER_MAP.items()}
    if not m or m.group(2) not in inv:
        raise KeyError(f"no Meta LLaMA name for {canonical!r}")
    return f"layers.{m.group(1)}.{inv[m.group(2)]}"


def _split_dim(meta_name: str) -> int | None:
    return _SPLIT_DIM.get(re.sub(r"^layers\.\d+\.", "", meta_name))


class MetaLlamaReader:
    """Stream tensors of a Meta LLaMA directory by canonical name, merging model-parallel shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        pfile = self.path / "params.json"
        if not pfile.is_file():
            raise CheckpointError(f"{self.path}: no params.json (not a Meta checkpoint directory)")
        try:
            self.params = json.loads(pfile.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{pfile}: invalid JSON ({err.msg} at line {err.lineno})") from None
        self.shard_files = sorted(self.path.glob("consolidated.*.pth"))
        if not self.shard_files:
            raise CheckpointError(f"{self.path}: no consolidated.*.pth shards")
        nums = [int(f.name.split(".")[1]) for f in self.shard_files]
        if nums != list(range(len(nums))):
            raise CheckpointError(f"{self.path}: shard numbers {nums} are not 00..{len(nums) - 1:02d} (a shard is missing)")
        self._shards = []
        for f in self.shard_files:
            try:
                self._shards.append(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
            except Exception as err:
                raise CheckpointError(f"{f}: cannot read ({str(err).splitlines()[0]})") from None
        self.config = self._config()
        self.shapes = expected_shapes(self.config)

    def _config(self) -> ModelConfig:
        p, first = self.params, self._shards[0]
        try:
            dim, n_heads, n_layers = p["dim"], p["n_heads"], p["n_layers"]
        except KeyError as err:
            raise CheckpointError(f"{self.path / 'params.json'}: missing key {err.args[0]!r}") from None
        if "layers.0.feed_forward.w1.weight" not in first or "tok_embeddings.weight" not in first:
            raise CheckpointError(f"{self.shard_files[0]}: missing tensor 'layers.0.feed_forward.w1.weight' or "
                                  f"'tok_embeddings.weight'")
        ffn = first["layers.0.feed_forward.w1.weight"].shape[0] * len(self._shards)
        vocab = p.get("vocab_size", -1)
        if vocab is None or vocab <= 0:
            vocab = first["tok_embeddings.weight"].shape[0]
        return ModelConfig(hidden_size=dim, intermediate_size=ffn, num_layers=n_layers, num_heads=n_heads,
                           num_kv_heads=p.get("n_kv_heads") or n_heads, vocab_size=vocab,
                           max_seq_len=p.get("max_seq_len", 4096), rope_theta=float(p.get("rope_theta", 10000.0)),
                           norm_eps=float(p.get("norm_eps", 1e-5)))

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str) -> torch.Tensor:
        meta = _meta_name(name)
        parts = []
        for f, sd in zip(self.shard_files, self._shards):
            if meta not in sd:
                raise CheckpointError(f"{f}: missing tensor {meta!r}")
            parts.append(sd[meta])
        dim = _split_dim(meta)
        t = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
        if name.endswith("attn.wq.weight"):
            t = meta_to_hf_rows(t, self.config.num_heads)
        elif name.endswith("attn.wk.weight"):
            t = meta_to_hf_rows(t, self.config.kv_heads)
        want = self.shapes[name]
        if tuple(t.shape) != want:
            if dim is not None and want[dim] % parts[0].shape[dim] == 0 and want[dim] != t.shape[dim]:
                n = want[dim] // parts[0].shape[dim]
                raise CheckpointError(f"{self.path}: {meta} merged from {len(parts)} consolidated.*.pth shards has "
                                      f"shape {tuple(t.shape)} but params.json implies {want}, which takes {n} "
                                      f"shards: a shard is missing or extra")
            raise CheckpointError(f"{self.path}: {meta} has merged shape {tuple(t.shape)} but params.json implies {want}")
        return t


def save_meta_checkpoint(tensors: dict[str, torch.Tensor], cfg: ModelConfig, path: str | Path, num_shards: int = 1) -> None:
    """Write canonical (HF-layout) tensors as a Meta checkpoint with `num_shards` model-parallel shards."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{} for _ in range(num_shards)]
    for name, t in tensors.items():
        if name.endswith("attn.wq.weight"):
            t = hf_to_meta_rows(t, cfg.num_heads)
        elif name.endswith("attn.wk.weight"):
            t = hf_to_meta_rows(t, cfg.kv_heads)
        meta = _meta_name(name)
        dim = _split_dim(meta)
        for i in range(num_shards):
            shards[i][meta] = t.clone() if dim is None else t.chunk(num_shards, dim=dim)[i].clone()
    for i, sd in enumerate(shards):
        torch.save(sd, path / f"consolidated.{i:02d}.pth")
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_layers, "n_heads": cfg.num_heads,
              "n_kv_heads": cfg.kv_heads, "vocab_size": cfg.vocab_size, "multiple_of": 256,
              "norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta}
    (path / "params.json").write_text(json.dumps(params, indent=2))
