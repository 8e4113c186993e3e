"""Model presets: the public configs of the supported bases (`model.preset: NAME`)."""
from __future__ import annotations

from typing import Any

from .rope import _llama3_rope


_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001)
_QWEN25 = dict(rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, bos_token_id=151643, eos_token_id=151643)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
                      vocab_size=32000, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40,
                       vocab_size=32000, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                      max_seq_len=8192, **_LLAMA3),
    "llama3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                        max_seq_len=131072, rope_scaling=_llama3_rope(8.0), **_LLAMA3),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
                        head_dim=64, max_seq_len=131072, rope_scaling=_llama3_rope(32.0), tie_embeddings=True,
                        **_LLAMA3),
    "llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24, num_kv_heads=8,
                        head_dim=128, max_seq_len=131072, rope_scaling=_llama3_rope(32.0), tie_embeddings=True,
                        **_LLAMA3),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       vocab_size=32768, max_seq_len=32768, rope_theta=1000000.0, norm_eps=1e-5),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                         vocab_size=151936, max_seq_len=32768, tie_embeddings=True, **_QWEN25),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                         vocab_size=151936, max_seq_len=32768, tie_embeddings=True, **_QWEN25),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                       vocab_size=152064, max_seq_len=131072, **_QWEN25),
    "tiny": dict(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
                 vocab_size=512, max_seq_len=128, rope_theta=10000.0, norm_eps=1e-5),
}
"""Public configs of the supported bases (config.json of each release); `model.preset: NAME` in a YAML file."""
