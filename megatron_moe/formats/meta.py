"""Meta-format LLaMA checkpoints: params.json + consolidated.NN.pth (LLaMA-2, LLaMA-3.x as Meta publishes them).

Meta splits tensors across model-parallel shards: tok_embeddings along dim 1; wq/wk/wv/w1/w3/output along dim 0;
wo/w2 along dim 1; norms replicated. Its q/k rows interleave rotary pairs, where HF (and we) use the half-split
layout: `meta_to_hf_rows` permutes them.

params.json fields: dim, n_layers, n_heads, n_kv_heads, vocab_size, norm_eps, rope_theta, max_seq_len (modelled);
multiple_of, ffn_dim_multiplier (they only fix the FFN width, which is read from the tensors); use_scaled_rope
(LLaMA-3.1+: llama3 rotary scaling with low 1, high 4, original context 8192, and the factor from
`rope_scaling_factor`, which Meta's code does not write: 8 for LLaMA-3.1, 32 for LLaMA-3.2 1B/3B; add it to
params.json, or import the HF checkpoint instead). Any other field is refused with one line.
A checkpoint without `output.weight` has tied embeddings.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig
from ..errors import CheckpointError
from .dense import canonical_shapes
from .hf_files import load_state_dict_file, read_json
from .keys import KeyMap

KEYS = KeyMap([("embed.weight", "tok_embeddings.weight"), ("norm.weight", "norm.weight"),
               ("lm_head.weight", "output.weight"),
               ("layers.{i}.attn_norm.weight", "layers.{i}.attention_norm.weight"),
               ("layers.{i}.mlp_norm.weight", "layers.{i}.ffn_norm.weight"),
               *[(f"layers.{{i}}.attn.w{o}.weight", f"layers.{{i}}.attention.w{o}.weight") for o in "qkvo"],
               *[(f"layers.{{i}}.mlp.w{k}.weight", f"layers.{{i}}.feed_forward.w{k}.weight") for k in "123"]])
_SPLIT_DIM = {"tok_embeddings.weight": 1, "output.weight": 0, "attention.wq.weight": 0, "attention.wk.weight": 0,
              "attention.wv.weight": 0, "attention.wo.weight": 1, "feed_forward.w1.weight": 0,
              "feed_forward.w3.weight": 0, "feed_forward.w2.weight": 1}
PARAMS_KNOWN = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps", "rope_theta", "max_seq_len",
                "multiple_of", "ffn_dim_multiplier", "use_scaled_rope", "rope_scaling_factor"}


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved rotary pairs (Meta) -> half-split (HF) for a q or k projection [n_heads*h, D]."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _split_dim(meta_name: str):
    return _SPLIT_DIM.get(re.sub(r"^layers\.\d+\.", "", meta_name))


class MetaLlamaReader:
    """Stream tensors of a Meta LLaMA directory by canonical name, merging model-parallel shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        pfile = self.path / "params.json"
        if not pfile.is_file():
            raise CheckpointError(f"{self.path}: no params.json (not a Meta checkpoint directory)")
        self.params = read_json(pfile)
        unknown = sorted(set(self.params) - PARAMS_KNOWN)
        if unknown:
            raise CheckpointError(f"{pfile}: field {unknown[0]}={self.params[unknown[0]]!r} is not known to "
                                  f"megatron_moe, so it may change the computation")
        self.shard_files = sorted(self.path.glob("consolidated.*.pth"))
        if not self.shard_files:
            raise CheckpointError(f"{self.path}: no consolidated.*.pth shards")
        nums = [int(f.name.split(".")[1]) for f in self.shard_files]
        if nums != list(range(len(nums))):
            raise CheckpointError(f"{self.path}: shard numbers {nums} are not 00..{len(nums) - 1:02d} (a shard is missing)")
        self._shards = [load_state_dict_file(f) for f in self.shard_files]
        self.config = self._config()
        self.shapes = canonical_shapes(self.config, names=self._shards[0].keys(), where=str(pfile),
                                       pattern=re.compile(r"^layers\.(\d+)\."))

    def _rope(self, pfile: Path):
        if not self.params.get("use_scaled_rope"):
            return None
        factor = self.params.get("rope_scaling_factor")
        if factor is None:
            raise CheckpointError(f"{pfile}: use_scaled_rope is set but the scaling factor is not (8 for LLaMA-3.1, "
                                  f"32 for LLaMA-3.2 1B/3B); add \"rope_scaling_factor\" to params.json or import "
                                  f"the HF checkpoint")
        return {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

    def _config(self) -> ModelConfig:
        from ..structured import field_int, field_number

        p, first, pfile = self.params, self._shards[0], self.path / "params.json"
        where = str(pfile)
        dim, n_heads = field_int(p, "dim", where, CheckpointError), field_int(p, "n_heads", where, CheckpointError)
        n_layers = field_int(p, "n_layers", where, CheckpointError)
        for name in ("layers.0.feed_forward.w1.weight", "tok_embeddings.weight"):
            if name not in first:
                raise CheckpointError(f"{self.shard_files[0]}: missing tensor {name!r}")
        ffn = first["layers.0.feed_forward.w1.weight"].shape[0] * len(self._shards)
        vocab = field_int(p, "vocab_size", where, CheckpointError, -1)
        if vocab <= 0:
            vocab = first["tok_embeddings.weight"].shape[0]
        cfg = ModelConfig(hidden_size=dim, intermediate_size=ffn, num_layers=n_layers, num_heads=n_heads,
                          num_kv_heads=field_int(p, "n_kv_heads", str(pfile), CheckpointError, n_heads),
                          vocab_size=int(vocab), max_seq_len=field_int(p, "max_seq_len", str(pfile), CheckpointError, 4096),
                          rope_theta=field_number(p, "rope_theta", str(pfile), CheckpointError, 10000.0),
                          rope_scaling=self._rope(pfile),
                          norm_eps=field_number(p, "norm_eps", str(pfile), CheckpointError, 1e-5),
                          tie_embeddings="output.weight" not in first)
        if cfg.vocab_size >= 128000:  # LLaMA-3's tokenizer: <|begin_of_text|>, <|end_of_text|>
            cfg.bos_token_id, cfg.eos_token_id = 128000, 128001
        try:
            cfg.validate()
        except ConfigError as err:
            raise CheckpointError(f"{pfile}: {err}") from None
        return cfg

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str) -> torch.Tensor:
        meta = KEYS.theirs(name)
        if meta is None or name not in self.shapes:
            raise CheckpointError(f"{self.path}: no tensor {name!r} in a model with this config")
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

    def release(self) -> None:
        pass  # shards are memory-mapped for the reader's lifetime
