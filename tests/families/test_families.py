"""Every dense family through the pipeline, against transformers itself: import -> our logits equal HF's at a
sequence longer than original_max_position_embeddings, for configs written in both rotary spellings; the lossless
chain dense -> convert (top-k = E, softmax_topk, scale E) -> MoE export -> transformers equals the dense model; the
dense export round-trips; load_model works."""
import json

import pytest
import torch

from _families import DENSE_EXPORT, FAMILIES, MOE_EXPORT, make_model, save
from megatron_moe import load_model
from megatron_moe.construct.convert import ConvertOptions, convert_dense_to_moe, verify_conversion
from megatron_moe.construct.dense import load_dense_into_model, open_dense
from megatron_moe.construct.import_dense import import_dense
from megatron_moe.export import export_hf

S = 96  # > original_max_position_embeddings (64) of the scaled-rope families


def _ids(vocab=160, seed=1):
    return torch.randint(0, vocab, (2, S), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    hf = make_model(request.param)
    save(hf, root / "hf")
    with torch.no_grad():
        want = hf(_ids()).logits
    return request.param, root, hf, want


@pytest.mark.parametrize("spelling", ["4.x", "5.x"])
def test_import_logits_equal_transformers(family, spelling, tmp_path):
    name, _, hf, want = family
    path = save(hf, tmp_path / "hf", spelling)
    reader = open_dense(path)
    from megatron_moe.config import Config
    from megatron_moe.model import build_model

    model = build_model(Config(model=reader.config)).eval()
    load_dense_into_model(model, reader)
    with torch.no_grad():
        got = model(_ids())
    assert (got - want).abs().max().item() <= 1e-4, name
    raw = json.loads((path / "config.json").read_text())
    assert ("rope_parameters" in raw) == (spelling == "5.x")
    if FAMILIES[name][2].get("rope_scaling"):
        assert reader.config.rope_scaling["rope_type"] == FAMILIES[name][2]["rope_scaling"]["rope_type"]


def test_import_tool_and_load_model(family):
    name, root, _, want = family
    import_dense(root / "hf", root / "ours", progress=False)
    with torch.no_grad():
        got = load_model(root / "ours")(_ids())
    assert (got - want).abs().max().item() <= 1e-4, name
    cfg = json.loads((root / "ours" / "config.json").read_text())["model"]
    assert cfg["tie_embeddings"] == ("tied" in name) and cfg["qkv_bias"] == name.startswith("qwen2")


def test_dense_export_loads_in_transformers(family):
    from transformers import AutoModelForCausalLM

    name, root, _, want = family
    if not (root / "ours").exists():
        import_dense(root / "hf", root / "ours", progress=False)
    fmt = DENSE_EXPORT.get(name, "llama")
    export_hf(root / "ours", root / f"dense_{fmt}", fmt)
    back = AutoModelForCausalLM.from_pretrained(root / f"dense_{fmt}", dtype=torch.float32).eval()
    with torch.no_grad():
        got = back(_ids()).logits
    assert (got - want).abs().max().item() <= 1e-4, name


def test_lossless_chain_through_moe_export(family):
    """All E experts at weight 1 equal the dense FFN: top-k = E, softmax over zero logits = 1/E, scale E."""
    from transformers import AutoModelForCausalLM

    name, root, _, want = family
    E = 4
    opts = ConvertOptions(num_experts=E, top_k=E, method="random", router="softmax_topk", score_scale=float(E))
    convert_dense_to_moe(root / "hf", root / "moe", opts, progress=False)
    assert verify_conversion(root / "hf", root / "moe") <= 1e-4
    with torch.no_grad():
        assert (load_model(root / "moe")(_ids()) - want).abs().max().item() <= 1e-4
    fmt = MOE_EXPORT.get(name, "mixtral")
    export_hf(root / "moe", root / fmt, fmt)
    back = AutoModelForCausalLM.from_pretrained(root / fmt, dtype=torch.float32).eval()
    assert type(back).__name__ == {"mixtral": "MixtralForCausalLM", "qwen2-moe": "Qwen2MoeForCausalLM"}[fmt]
    with torch.no_grad():
        got = back(_ids()).logits
    assert (got - want).abs().max().item() <= 1e-4, name


def test_llama_base_also_exports_as_qwen2_moe(tmp_path):
    """qwen2-moe holds a LLaMA base too: zero q/k/v biases, and a shared expert that adds exactly zero."""
    from transformers import AutoModelForCausalLM

    hf = make_model("llama2")
    save(hf, tmp_path / "hf")
    with torch.no_grad():
        want = hf(_ids()).logits
    opts = ConvertOptions(num_experts=4, top_k=4, method="random", router="softmax_topk", score_scale=4.0)
    convert_dense_to_moe(tmp_path / "hf", tmp_path / "moe", opts, progress=False)
    export_hf(tmp_path / "moe", tmp_path / "q", "qwen2-moe")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["qkv_bias"] is True and cfg["shared_expert_intermediate_size"] == 1
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "q", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(_ids()).logits - want).abs().max().item() <= 1e-4
