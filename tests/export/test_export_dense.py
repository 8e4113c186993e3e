"""Dense path: HF LLaMA -> our checkpoint -> load_model / export llama -> transformers, same logits."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megatron_moe import load_model
from megatron_moe.construct.import_dense import import_dense
from megatron_moe.errors import CheckpointError, UserError
from megatron_moe.export import ExportError, HFWriter, export_hf
from megatron_moe.formats.hf_files import HFTensors


def _word_level_tokenizer(vocab: int) -> str:
    """A small real tokenizer.json (LLaMA's special-token ids) that the export must carry unchanged."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=32)).eval()
    hf.save_pretrained(d / "hf")
    (d / "hf" / "tokenizer.json").write_text(_word_level_tokenizer(128))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
    import_dense(d / "hf", d / "ours")
    return d, ids, want


def test_load_model_api_matches_hf(dense):
    d, ids, want = dense
    model = load_model(d / "ours")
    assert not model.training
    with torch.no_grad():
        got = model(ids)
    assert got.shape == (2, 12, 128)
    assert (got - want).abs().max().item() <= 1e-4


def test_export_llama_roundtrip(dense):
    d, ids, want = dense
    out = export_hf(d / "ours", d / "hf_out", "llama")
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").read_bytes() == (d / "hf" / "tokenizer.json").read_bytes()
    assert not list(d.glob(".hf_out.tmp-*"))
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (hf(ids).logits - want).abs().max().item() <= 1e-4


def test_export_sharded_index(dense, tmp_path):
    d, ids, want = dense
    out = export_hf(d / "ours", tmp_path / "sharded", "llama", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert "model.layers.1.mlp.down_proj.weight" in index["weight_map"]
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (hf(ids).logits - want).abs().max().item() <= 1e-4


def test_bf16_export_dtype(dense, tmp_path):
    d, _, _ = dense
    out = export_hf(d / "ours", tmp_path / "bf", "llama", dtype=torch.bfloat16)
    t = HFTensors(out)
    assert t.get("model.embed_tokens.weight").dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_bad_inputs(dense, tmp_path):
    d, _, _ = dense
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export_hf(tmp_path / "nope", tmp_path / "o1", "llama")
    with pytest.raises(UserError, match="already exists"):
        export_hf(d / "ours", d / "hf", "llama")
    with pytest.raises(ExportError, match="needs an MoE checkpoint.*--format llama"):
        export_hf(d / "ours", tmp_path / "o2", "mixtral")
    with pytest.raises(ExportError, match="unknown export format"):
        export_hf(d / "ours", tmp_path / "o3", "gpt2")
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o*"))


def test_corrupt_part_is_reported_and_nothing_written(dense, tmp_path):
    import shutil

    d, _, _ = dense
    bad = tmp_path / "bad"
    shutil.copytree(d / "ours", bad)
    for f in (bad / "model" / "layer_001").glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="layer_001"):
        export_hf(bad, tmp_path / "out", "llama")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(bad)


def test_writer_aborts_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with HFWriter(tmp_path / "w") as w:
            w.add("a", torch.ones(2))
            raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())
