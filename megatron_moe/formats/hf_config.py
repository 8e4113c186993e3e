"""Reading and writing the config.json of the dense LLaMA-family HF formats (llama, mistral, qwen2).

Rule: every field either is modelled (mapped onto ModelConfig), refused with one line naming it, or on an
explicit list of fields known not to change the computation (GENERIC_HARMLESS: bookkeeping and generation
defaults). A field this file does not know is refused too, naming it; `ignore` (CLI: --ignore-config-field)
accepts named fields you have checked yourself.

Rotary settings are read in both spellings: transformers 4.x writes `rope_theta` + `rope_scaling` at the top
level (what hub checkpoints carry), 5.x writes `rope_parameters` (with `rope_theta` inside). Exports write both.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ..config import ConfigError, ModelConfig, check_rope_scaling
from ..errors import CheckpointError

# bookkeeping, I/O and generation defaults of transformers' PretrainedConfig (4.x and 5.x): no effect on the
# forward pass or training
GENERIC_HARMLESS = frozenset("""
_name_or_path architectures model_type transformers_version torch_dtype dtype use_cache bos_token_id eos_token_id
pad_token_id sep_token_id decoder_start_token_id initializer_range id2label label2id num_labels problem_type
finetuning_task output_attentions output_hidden_states output_scores return_dict return_dict_in_generate
torchscript use_bfloat16 tf_legacy_loss pruned_heads chunk_size_feed_forward is_encoder_decoder is_decoder
add_cross_attention cross_attention_hidden_size tie_encoder_decoder prefix task_specific_params tokenizer_class
max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty temperature top_k top_p
typical_p repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
num_return_sequences remove_invalid_values exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
forced_bos_token_id forced_eos_token_id _attn_implementation_autoset _commit_hash pretraining_tp
""".split())
"""pretraining_tp: transformers' LLaMA slices its matmuls into that many pieces (same result up to rounding)."""

COMMON_MODELLED = frozenset("""
hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads vocab_size
max_position_embeddings rms_norm_eps rope_theta rope_scaling rope_parameters head_dim tie_word_embeddings hidden_act
attention_dropout
""".split())
FAMILY_FIELDS = {"llama": {"attention_bias", "mlp_bias"}, "mistral": {"sliding_window"},
                 "qwen2": {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "use_mrope"}}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _fail(where: str, msg: str) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


def read_rope(hf: dict, where: str) -> tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling or None) from either spelling; unsupported scaling is refused."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = dict(hf.get("rope_scaling") or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    if scaling.get("rope_type", "default") == "default":
        extra = set(scaling) - {"rope_type"}
        if extra:
            raise _fail(where, f"rope settings {sorted(extra)} with rope_type=default would be ignored")
        scaling = None
    try:
        check_rope_scaling(scaling, "rope_scaling")
    except ConfigError as err:
        raise _fail(where, str(err)) from None
    return float(theta), scaling


def _sliding_window(hf: dict, family: str, n_layers: int) -> Optional[int]:
    window = hf.get("sliding_window")
    if family == "mistral":
        return int(window) if window else None
    if family == "qwen2" and hf.get("use_sliding_window"):
        types = hf.get("layer_types")
        slides = ("sliding_attention" in types) if isinstance(types, list) else \
            int(hf.get("max_window_layers", n_layers)) < n_layers
        return int(window) if slides and window else None
    return None


def model_config_from_hf(hf: dict, where: str = "config.json", ignore: Iterable[str] = ()) -> ModelConfig:
    """ModelConfig of a dense llama / mistral / qwen2 config.json; CheckpointError naming any field it cannot honour."""
    family = hf.get("model_type")
    if family not in ARCHITECTURES:
        archs = hf.get("architectures") or family
        raise _fail(where, f"unsupported architecture {archs!r}; supported dense families: "
                           f"{', '.join(ARCHITECTURES.values())}")
    archs = hf.get("architectures") or [ARCHITECTURES[family]]
    if ARCHITECTURES[family] not in archs:
        raise _fail(where, f"architectures={archs} is not {ARCHITECTURES[family]}")
    known = GENERIC_HARMLESS | COMMON_MODELLED | FAMILY_FIELDS[family] | set(ignore)
    unknown = sorted(k for k in hf if k not in known)
    if unknown:
        raise _fail(where, f"field {unknown[0]}={hf[unknown[0]]!r} is not known to megatron_moe, so it may change the "
                           f"computation; if it does not, pass --ignore-config-field {unknown[0]}")
    if hf.get("hidden_act", "silu") != "silu":
        raise _fail(where, f"hidden_act={hf['hidden_act']!r} is not supported (SwiGLU needs silu)")
    if float(hf.get("attention_dropout") or 0.0) != 0.0:
        raise _fail(where, f"attention_dropout={hf['attention_dropout']} is not supported (no dropout is applied)")
    if hf.get("mlp_bias"):
        raise _fail(where, "mlp_bias=true (biases in the FFN) is not supported")
    if hf.get("use_mrope"):  # false in every Qwen2/2.5 text checkpoint; true only in multimodal (VL) variants
        raise _fail(where, "use_mrope=true (multimodal rotary sections) is not supported")
    theta, scaling = read_rope(hf, where)

    from ..errors import CheckpointError
    from ..structured import _MISSING, field_int, field_number

    def integer(key, default=_MISSING):
        return field_int(hf, key, where, CheckpointError, default)

    def number(key, default):
        return field_number(hf, key, where, CheckpointError, default)

    try:
        H, D = integer("num_attention_heads"), integer("hidden_size")
        L = integer("num_hidden_layers")
        head_dim = integer("head_dim", None)
        attn_bias = bool(hf.get("attention_bias", False))
        cfg = ModelConfig(
            hidden_size=D, intermediate_size=integer("intermediate_size"), num_layers=L, num_heads=H,
            num_kv_heads=integer("num_key_value_heads", H), vocab_size=integer("vocab_size"),
            head_dim=None if head_dim is None or (H > 0 and head_dim == D // H) else head_dim,
            max_seq_len=integer("max_position_embeddings", 4096), rope_theta=theta, rope_scaling=scaling,
            norm_eps=number("rms_norm_eps", 1e-6 if family == "qwen2" else 1e-5),
            qkv_bias=family == "qwen2" or attn_bias, attn_out_bias=attn_bias,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=_sliding_window(hf, family, L),
            bos_token_id=hf.get("bos_token_id") if hf.get("bos_token_id") is not None else 1,
            eos_token_id=hf.get("eos_token_id") if hf.get("eos_token_id") is not None else 2)
    except KeyError as err:
        raise _fail(where, f"missing key {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise _fail(where, f"malformed value ({err})") from None
    if cfg.sliding_window and cfg.sliding_window >= cfg.max_seq_len:
        cfg.sliding_window = None  # a window as long as the context masks nothing
    try:
        cfg.validate()
    except ConfigError as err:
        raise _fail(where, str(err)) from None
    return cfg


def rope_fields(cfg: ModelConfig) -> dict:
    """Rotary settings in both spellings (4.x: rope_theta + rope_scaling; 5.x: rope_parameters)."""
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    params = {"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rope_theta}
    return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling, "rope_parameters": params}


def hf_config_common(cfg: ModelConfig, dtype_name: str) -> dict:
    """The fields every LLaMA-family HF config shares (dense and MoE exports)."""
    return {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_width, "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
            "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0, **rope_fields(cfg),
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "torch_dtype": dtype_name,
            "use_cache": True}
