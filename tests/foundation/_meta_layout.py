"""Write a Meta-format checkpoint (params.json + consolidated.NN.pth) from a transformers LlamaForCausalLM, the
way Meta's own code stores it, independently of megatron_moe's reader: Meta names, model-parallel shards
(ColumnParallel rows for wq/wk/wv/w1/w3/output, RowParallel columns for wo/w2, embedding split along dim 1, norms
replicated), and q/k rows in Meta's interleaved rotary order, i.e. the inverse of the permutation transformers'
convert_llama_weights_to_hf.py applies (`w.view(h, d/h/2, 2, D).transpose(1, 2)` from Meta to HF)."""
import json

import torch

_LAYER = {"input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
          "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
          "mlp.down_proj": "feed_forward.w2"}
_DIM0 = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
_DIM1 = ("attention.wo", "feed_forward.w2", "tok_embeddings")


def hf_rows_to_meta(w, n_heads):
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def write_meta(hf_model, path, num_shards=1, extra_params=None):
    cfg = hf_model.config
    sd = {}
    for name, t in hf_model.state_dict().items():
        t = t.detach().clone()
        if name == "model.embed_tokens.weight":
            sd["tok_embeddings.weight"] = t
        elif name == "model.norm.weight":
            sd["norm.weight"] = t
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                sd["output.weight"] = t
        else:
            _, _, i, rest = name.split(".", 3)
            mod, kind = rest.rsplit(".", 1)
            meta = f"layers.{i}.{_LAYER[mod]}.{kind}"
            if mod == "self_attn.q_proj":
                t = hf_rows_to_meta(t, cfg.num_attention_heads)
            elif mod == "self_attn.k_proj":
                t = hf_rows_to_meta(t, cfg.num_key_value_heads)
            sd[meta] = t
    path.mkdir(parents=True, exist_ok=True)
    for r in range(num_shards):
        shard = {}
        for name, t in sd.items():
            base = name.split(".", 2)[-1].rsplit(".", 1)[0] if name.startswith("layers.") else name.rsplit(".", 1)[0]
            if base in _DIM0:
                t = t.chunk(num_shards, 0)[r]
            elif base in _DIM1:
                t = t.chunk(num_shards, 1)[r]
            shard[name] = t.clone()
        torch.save(shard, path / f"consolidated.{r:02d}.pth")
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size, "multiple_of": 32,
              "norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_parameters["rope_theta"], **(extra_params or {})}
    (path / "params.json").write_text(json.dumps(params))
    return path
