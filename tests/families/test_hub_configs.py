"""The config.json files of released checkpoints, field for field as published on the Hugging Face hub (public
facts, typed here because tests have no network), must import without --ignore-config-field and describe the
same architecture as our presets. Fixtures written by transformers (the other family tests) cannot catch a field
that only real checkpoints carry, such as Qwen2.5's `use_mrope: false`."""
import pytest

from megatron_moe.config import MODEL_PRESETS, ModelConfig
from megatron_moe.errors import CheckpointError
from megatron_moe.formats.hf_config import model_config_from_hf

_LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", initializer_range=0.02,
              rms_norm_eps=1e-05, torch_dtype="bfloat16", use_cache=True)
_L3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
            "rope_type": "llama3"}
HUB = {
    "meta-llama/Llama-2-7b-hf": ("llama2-7b", dict(
        _LLAMA, _name_or_path="meta-llama/Llama-2-7b-hf", bos_token_id=1, eos_token_id=2, hidden_size=4096,
        intermediate_size=11008, max_position_embeddings=4096, num_attention_heads=32, num_hidden_layers=32,
        num_key_value_heads=32, pretraining_tp=1, rope_scaling=None, tie_word_embeddings=False,
        torch_dtype="float16", transformers_version="4.31.0.dev0", vocab_size=32000)),
    "meta-llama/Meta-Llama-3-8B": ("llama3-8b", dict(
        _LLAMA, attention_bias=False, attention_dropout=0.0, bos_token_id=128000, eos_token_id=128001,
        hidden_size=4096, intermediate_size=14336, max_position_embeddings=8192, num_attention_heads=32,
        num_hidden_layers=32, num_key_value_heads=8, pretraining_tp=1, rope_scaling=None, rope_theta=500000.0,
        tie_word_embeddings=False, transformers_version="4.40.0.dev0", vocab_size=128256)),
    "meta-llama/Llama-3.1-8B": ("llama3.1-8b", dict(
        _LLAMA, attention_bias=False, attention_dropout=0.0, bos_token_id=128000, eos_token_id=128001,
        hidden_size=4096, intermediate_size=14336, max_position_embeddings=131072, mlp_bias=False,
        num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8, pretraining_tp=1,
        rope_scaling=_L3_ROPE, rope_theta=500000.0, tie_word_embeddings=False, transformers_version="4.43.0.dev0",
        vocab_size=128256)),
    "meta-llama/Llama-3.2-1B": ("llama3.2-1b", dict(
        _LLAMA, attention_bias=False, attention_dropout=0.0, bos_token_id=128000, eos_token_id=128001, head_dim=64,
        hidden_size=2048, intermediate_size=8192, max_position_embeddings=131072, mlp_bias=False,
        num_attention_heads=32, num_hidden_layers=16, num_key_value_heads=8, pretraining_tp=1,
        rope_scaling=dict(_L3_ROPE, factor=32.0), rope_theta=500000.0, tie_word_embeddings=True,
        transformers_version="4.45.0.dev0", vocab_size=128256)),
    "mistralai/Mistral-7B-v0.3": ("mistral-7b", dict(
        architectures=["MistralForCausalLM"], attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
        hidden_act="silu", hidden_size=4096, initializer_range=0.02, intermediate_size=14336,
        max_position_embeddings=32768, model_type="mistral", num_attention_heads=32, num_hidden_layers=32,
        num_key_value_heads=8, rms_norm_eps=1e-05, rope_theta=1000000.0, sliding_window=None,
        tie_word_embeddings=False, torch_dtype="bfloat16", transformers_version="4.42.0.dev0", use_cache=True,
        vocab_size=32768)),
    "Qwen/Qwen2.5-0.5B": ("qwen2.5-0.5b", dict(
        architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=151643, eos_token_id=151643,
        hidden_act="silu", hidden_size=896, initializer_range=0.02, intermediate_size=4864,
        max_position_embeddings=32768, max_window_layers=24, model_type="qwen2", num_attention_heads=14,
        num_hidden_layers=24, num_key_value_heads=2, rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=32768,
        tie_word_embeddings=True, torch_dtype="bfloat16", transformers_version="4.40.1", use_cache=True,
        use_mrope=False, use_sliding_window=False, vocab_size=151936)),
    "Qwen/Qwen2.5-7B": ("qwen2.5-7b", dict(
        architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=151643, eos_token_id=151643,
        hidden_act="silu", hidden_size=3584, initializer_range=0.02, intermediate_size=18944,
        max_position_embeddings=131072, max_window_layers=28, model_type="qwen2", num_attention_heads=28,
        num_hidden_layers=28, num_key_value_heads=4, rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=131072,
        tie_word_embeddings=False, torch_dtype="bfloat16", transformers_version="4.43.1", use_cache=True,
        use_mrope=False, use_sliding_window=False, vocab_size=152064)),
}
FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "kv_heads", "head_width", "vocab_size",
          "max_seq_len", "rope_theta", "rope_scaling", "norm_eps", "qkv_bias", "attn_out_bias", "tie_embeddings",
          "sliding_window", "bos_token_id", "eos_token_id")


@pytest.mark.parametrize("repo", sorted(HUB))
def test_released_config_imports_as_its_preset(repo):
    preset, hf = HUB[repo]
    got, want = model_config_from_hf(hf, repo), ModelConfig(**MODEL_PRESETS[preset])
    assert {f: getattr(got, f) for f in FIELDS} == {f: getattr(want, f) for f in FIELDS}


def test_multimodal_rotary_is_refused():
    _, hf = HUB["Qwen/Qwen2.5-7B"]
    with pytest.raises(CheckpointError, match="use_mrope=true"):
        model_config_from_hf(dict(hf, use_mrope=True), "config.json")
