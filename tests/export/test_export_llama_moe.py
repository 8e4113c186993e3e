"""LLaMA-MoE v1 layout: export -> import round trip, and a hand-built checkpoint in that layout imports."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from _moe_helpers import ids, make_moe
from megatron_moe import load_model
from megatron_moe.checkpoint import read_config, read_tensors
from megatron_moe.errors import CheckpointError, UserError
from megatron_moe.export import export_hf, import_llama_moe
from megatron_moe.formats.hf_files import HFTensors


def test_roundtrip_identical(tmp_path):
    make_moe(tmp_path / "ck", router="noisy_topk", gate_network="mlp", top_k=2, score_scale=2.5)
    out = export_hf(tmp_path / "ck", tmp_path / "hf", "llama-moe")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama_moe" and cfg["score_scale_factor"] == 2.5 and cfg["gate_network"] == "mlp"
    assert cfg["size_experts"] == [[16] * 4] * 2 and cfg["intermediate_size"] == 64
    names = HFTensors(out).names()
    for n in ("model.layers.0.mlp.gate.gate_network.0.weight", "model.layers.0.mlp.gate.gate_network.2.weight",
              "model.layers.1.mlp.gate.weight_noise.weight", "model.layers.1.mlp.calculator.experts.weight_down.3"):
        assert n in names
    import_llama_moe(out, tmp_path / "back")
    a, b = read_tensors(tmp_path / "ck"), read_tensors(tmp_path / "back")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    (m1, e1, _), (m2, e2, _) = read_config(tmp_path / "ck"), read_config(tmp_path / "back")
    assert m1 == m2 and (e2.router, e2.gate_network, e2.scale, e2.top_k) == ("noisy_topk", "mlp", 2.5, 2)
    assert (e1.num_experts, e1.ffn_size(m1), e1.router, e1.gate_network, e1.scale, e1.top_k) == \
        (e2.num_experts, e2.ffn_size(m2), e2.router, e2.gate_network, e2.scale, e2.top_k)
    x = ids()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "ck")(x), load_model(tmp_path / "back")(x))


def _hand_built(path, add_noise=False):
    """A 1-layer LLaMA-MoE v1 directory written by hand: D=16, 4 experts of 8, top-2, linear gate, scale 2."""
    g = torch.Generator().manual_seed(7)
    D, E, Fe, V = 16, 4, 8, 32
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"model.embed_tokens.weight": r(V, D), "model.norm.weight": 1 + r(D), "lm_head.weight": r(V, D),
          "model.layers.0.input_layernorm.weight": 1 + r(D), "model.layers.0.post_attention_layernorm.weight": 1 + r(D),
          "model.layers.0.self_attn.q_proj.weight": r(D, D), "model.layers.0.self_attn.k_proj.weight": r(D, D),
          "model.layers.0.self_attn.v_proj.weight": r(D, D), "model.layers.0.self_attn.o_proj.weight": r(D, D),
          "model.layers.0.mlp.gate.gate_network.weight": r(E, D) * 5}
    for j in range(E):
        sd[f"model.layers.0.mlp.calculator.experts.weight_gate.{j}"] = r(Fe, D)
        sd[f"model.layers.0.mlp.calculator.experts.weight_up.{j}"] = r(Fe, D)
        sd[f"model.layers.0.mlp.calculator.experts.weight_down.{j}"] = r(D, Fe)
    path.mkdir()
    save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaMoEForCausalLM"], "model_type": "llama_moe", "vocab_size": V, "hidden_size": D,
        "intermediate_size": E * Fe, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "num_experts": E, "num_selects": 2, "size_experts": None,
        "gate_type": "TopKBalancedNoisyGate", "gate_network": "linear", "gate_use_softmax": True,
        "gate_add_noise": add_noise, "gate_noise_epsilon": 0.01, "calculator_type": "UniversalCalculator",
        "multiply_gate_scores": True, "score_scale_factor": 2.0}))
    (path / "tokenizer.model").write_bytes(b"spm")
    return sd


def test_hand_built_checkpoint_imports_with_llama_moe_semantics(tmp_path):
    sd = _hand_built(tmp_path / "hf")
    import_llama_moe(tmp_path / "hf", tmp_path / "ck")
    assert (tmp_path / "ck" / "tokenizer.model").read_bytes() == b"spm"
    _, moe, _ = read_config(tmp_path / "ck")
    assert (moe.num_experts, moe.top_k, moe.expert_ffn_size, moe.scale, moe.gate_network) == (4, 2, 8, 2.0, "linear")
    t = read_tensors(tmp_path / "ck")
    assert torch.equal(t["layers.0.mlp.experts.w2"][3], sd["model.layers.0.mlp.calculator.experts.weight_down.3"])
    model = load_model(tmp_path / "ck")
    # the MoE layer computes the LLaMA-MoE formula: softmax over the top-k gate logits, times scale, sum of experts
    x_TD = torch.randn(10, 16, generator=torch.Generator().manual_seed(3))
    logits_TE = x_TD @ sd["model.layers.0.mlp.gate.gate_network.weight"].t()
    top_TK, idx_TK = logits_TE.topk(2, dim=-1)
    w_TK = torch.softmax(top_TK, -1) * 2.0
    want = torch.zeros_like(x_TD)
    for tkn in range(10):
        for k in range(2):
            j = int(idx_TK[tkn, k])
            p = "model.layers.0.mlp.calculator.experts."
            h = F.silu(x_TD[tkn] @ sd[f"{p}weight_gate.{j}"].t()) * (x_TD[tkn] @ sd[f"{p}weight_up.{j}"].t())
            want[tkn] += w_TK[tkn, k] * (h @ sd[f"{p}weight_down.{j}"].t())
    with torch.no_grad():
        got = model.layers[0].mlp(x_TD.view(2, 5, 16)).reshape(10, 16)
    assert (got - want).abs().max().item() <= 1e-5


def test_import_bad_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        import_llama_moe(tmp_path, tmp_path / "o")
    _hand_built(tmp_path / "hf")
    import_llama_moe(tmp_path / "hf", tmp_path / "ok")
    with pytest.raises(UserError, match="already exists"):
        import_llama_moe(tmp_path / "hf", tmp_path / "ok")
    f = tmp_path / "hf" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        import_llama_moe(tmp_path / "hf", tmp_path / "o2")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "gate_type": "SwitchBalancedGate"}))
    with pytest.raises(CheckpointError, match="gate_type"):
        import_llama_moe(tmp_path / "hf", tmp_path / "o3")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_export_carries_auto_map_and_rotary_buffers(tmp_path):
    """What the released LLaMA-MoE checkpoints carry: the auto_map their modeling code is loaded through
    (trust_remote_code), and per-layer rotary_emb.inv_freq = 1 / theta^(2i/h)."""
    make_moe(tmp_path / "ck", router="noisy_topk", gate_network="mlp")
    out = export_hf(tmp_path / "ck", tmp_path / "hf", "llama-moe")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_llama_moe.LlamaMoEConfig",
                               "AutoModel": "modeling_llama_moe.LlamaMoEModel",
                               "AutoModelForCausalLM": "modeling_llama_moe.LlamaMoEForCausalLM"}
    h = 32 // 4
    want = 1.0 / (10000.0 ** (torch.arange(0, h, 2, dtype=torch.float32) / h))
    files = HFTensors(out)
    for i in range(2):
        assert torch.allclose(files.get(f"model.layers.{i}.self_attn.rotary_emb.inv_freq"), want)
    import_llama_moe(out, tmp_path / "back")  # and they import back (checked, then dropped)


@pytest.mark.parametrize("scale,ok", [([2.0], True), ([2.0, 3.0], False)])
def test_per_layer_score_scale_list(tmp_path, scale, ok):
    _hand_built(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "score_scale_factor": scale}))
    if ok:  # one layer: a list of one (equal) value is that value
        import_llama_moe(tmp_path / "hf", tmp_path / "ck")
        assert read_config(tmp_path / "ck")[1].scale == 2.0
    else:
        with pytest.raises(CheckpointError, match="score_scale_factor must be one number, or 1 equal ones"):
            import_llama_moe(tmp_path / "hf", tmp_path / "ck")


def test_llama_moe_refuses_non_llama2_bases(tmp_path):
    from megatron_moe.formats import ExportError

    make_moe(tmp_path / "q", router="noisy_topk", model_kw={"qkv_bias": True})
    with pytest.raises(ExportError, match="cannot hold q/k/v biases.*--format qwen2-moe"):
        export_hf(tmp_path / "q", tmp_path / "o", "llama-moe")
    make_moe(tmp_path / "l3", router="noisy_topk", model_kw={"rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}})
    with pytest.raises(ExportError, match="cannot hold rope_type=llama3 rotary scaling.*--format mixtral"):
        export_hf(tmp_path / "l3", tmp_path / "o", "llama-moe")
