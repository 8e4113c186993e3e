"""MoE export to formats transformers loads with no custom code: mixtral and qwen2-moe, and the dense->MoE chain."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM

from _moe_helpers import ids, make_moe, save_state
from megatron_moe import load_model
from megatron_moe.config import ModelConfig, MoEConfig
from megatron_moe.export import ExportError, export_hf
from megatron_moe.formats.hf_files import HFTensors


@pytest.mark.parametrize("router", ["noisy_topk", "softmax_topk"])
def test_mixtral_logits_match(tmp_path, router):
    make_moe(tmp_path / "ck", router=router, gate_network="linear", top_k=2, score_scale=1.7)
    x = ids()
    with torch.no_grad():
        want = load_model(tmp_path / "ck")(x)
    out = export_hf(tmp_path / "ck", tmp_path / "hf", "mixtral")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2 and cfg["model_type"] == "mixtral"
    names = HFTensors(out).names()
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in names
    assert "model.layers.0.block_sparse_moe.gate.weight" in names
    hf = MixtralForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.model.layers[0].mlp.gate.weight.abs().sum() > 0  # non-zero router really loaded
    with torch.no_grad():
        got = hf(x).logits
    assert (got - want).abs().max().item() <= 1e-4
    # the scale is folded into w2 (and only there)
    from megatron_moe.checkpoint import read_tensors

    ours = read_tensors(tmp_path / "ck", ["layers.0.mlp.experts.w2", "layers.0.mlp.experts.w1"])
    theirs = HFTensors(out)
    assert torch.allclose(theirs.get("model.layers.0.block_sparse_moe.experts.1.w2.weight"),
                          ours["layers.0.mlp.experts.w2"][1] * 1.7)
    assert torch.equal(theirs.get("model.layers.0.block_sparse_moe.experts.1.w1.weight"),
                       ours["layers.0.mlp.experts.w1"][1])


def _partition_dense_to_moe(dense: dict, cfg: ModelConfig, E: int, seed: int) -> dict:
    """Independent-Random split of each FFN into E experts (test-local stand-in for the converter)."""
    out = {}
    g = torch.Generator().manual_seed(seed)
    F = cfg.intermediate_size // E
    for n, t in dense.items():
        if ".mlp.w" not in n:
            out[n] = t
    for i in range(cfg.num_layers):
        p = f"layers.{i}.mlp."
        perm = torch.randperm(cfg.intermediate_size, generator=g).view(E, F)
        out[p + "experts.w1"] = torch.stack([dense[p + "w1.weight"][idx] for idx in perm])
        out[p + "experts.w3"] = torch.stack([dense[p + "w3.weight"][idx] for idx in perm])
        out[p + "experts.w2"] = torch.stack([dense[p + "w2.weight"][:, idx] for idx in perm])
        out[p + "router.gate.weight"] = torch.zeros(E, cfg.hidden_size)
    return out


def test_chain_dense_llama_to_moe_to_mixtral(tmp_path):
    from megatron_moe.construct.import_dense import import_dense
    from megatron_moe.checkpoint import read_config, read_tensors

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=96, max_position_embeddings=32)).eval()
    llama.save_pretrained(tmp_path / "llama")
    import_dense(tmp_path / "llama", tmp_path / "dense")
    model_cfg, _, _ = read_config(tmp_path / "dense")
    E = 4  # top-k E, scale E, zero router: every expert weighs 1/E * E = 1
    moe_cfg = MoEConfig(num_experts=E, top_k=E, score_scale=float(E), router="softmax_topk", use_kernels="off")
    state = _partition_dense_to_moe(read_tensors(tmp_path / "dense"), model_cfg, E, seed=5)
    save_state(state, model_cfg, moe_cfg, tmp_path / "moe")
    out = export_hf(tmp_path / "moe", tmp_path / "mixtral", "mixtral")
    x = ids()
    with torch.no_grad():
        want = llama(x).logits
        got = MixtralForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(x).logits
        ours = load_model(tmp_path / "moe")(x)
    assert (got - want).abs().max().item() <= 1e-4
    assert (ours - want).abs().max().item() <= 1e-4


def test_qwen2_moe_with_shared_experts_and_a_dense_layer(tmp_path):
    make_moe(tmp_path / "ck", router="softmax_topk", num_shared_experts=2, shared_expert_ffn_size=8,
             shared_expert_scale=1.0, moe_layers=[1])
    x = ids()
    with torch.no_grad():
        want = load_model(tmp_path / "ck")(x)
    out = export_hf(tmp_path / "ck", tmp_path / "hf", "qwen2-moe")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlp_only_layers"] == [0] and cfg["shared_expert_intermediate_size"] == 16
    hf = Qwen2MoeForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.equal(hf.model.layers[1].mlp.shared_expert_gate.weight, torch.zeros(1, 32))
    with torch.no_grad():
        got = hf(x).logits
    assert (got - want).abs().max().item() <= 1e-4


def test_wrong_format_for_router_type(tmp_path):
    make_moe(tmp_path / "mlp", router="noisy_topk", gate_network="mlp")
    with pytest.raises(ExportError, match="gate_network=mlp.*--format llama-moe"):
        export_hf(tmp_path / "mlp", tmp_path / "o", "mixtral")
    make_moe(tmp_path / "sig", router="sigmoid")
    for fmt in ("mixtral", "llama-moe"):
        with pytest.raises(ExportError, match="router=sigmoid"):
            export_hf(tmp_path / "sig", tmp_path / "o", fmt)
    make_moe(tmp_path / "shared", router="softmax_topk", num_shared_experts=1)
    with pytest.raises(ExportError, match="--format qwen2-moe"):
        export_hf(tmp_path / "shared", tmp_path / "o", "mixtral")
    with pytest.raises(ExportError, match="dense"):
        export_hf(tmp_path / "shared", tmp_path / "o", "llama")
    with pytest.raises(ExportError, match="--format qwen2-moe needs a softmax top-k router.*--format llama-moe"):
        export_hf(tmp_path / "mlp", tmp_path / "o", "qwen2-moe")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_exported_mixtral_generates_like_ours(tmp_path):
    """The export, reloaded with plain transformers, continues a prompt greedily exactly as our model does."""
    from transformers import AutoModelForCausalLM

    make_moe(tmp_path / "ck", router="noisy_topk", gate_network="linear")
    export_hf(tmp_path / "ck", tmp_path / "hf", "mixtral")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    prompt = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                             pad_token_id=0)[0, 4:].tolist()
        ours, seq = load_model(tmp_path / "ck"), prompt
        for _ in range(5):
            seq = torch.cat([seq, ours(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert len(theirs) == 5 and theirs == seq[0, 4:].tolist()
