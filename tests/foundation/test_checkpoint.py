"""Our checkpoint format: import from HF, load in any TP layout, save from TP=2, atomic writes."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from _dist import spawn
from megatron_moe.checkpoint import (CheckpointWriter, is_checkpoint, load_into, read_config,
                                     read_tensors, resolve, save_model)
from megatron_moe.config import Config, ParallelConfig
from megatron_moe.construct.import_dense import import_dense
from megatron_moe.errors import CheckpointError, UserError
from megatron_moe.model import build_model


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                      max_position_embeddings=32)).eval()
    hf.save_pretrained(d / "hf")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(ids).logits
    import_dense(d / "hf", d / "ours")
    return d, ids, want


def test_import_then_load(imported):
    d, ids, want = imported
    assert is_checkpoint(d / "ours")
    model_cfg, moe_cfg, raw = read_config(d / "ours")
    assert model_cfg.num_kv_heads == 2 and not moe_cfg.enabled and raw["format"] == "megatron_moe"
    model = build_model(Config(model=model_cfg)).eval()
    load_into(model, d / "ours")
    with torch.no_grad():
        assert (model(ids) - want).abs().max().item() <= 1e-4


def _tp2(rank, world, ckpt, out_dir):
    from megatron_moe.parallel import init_parallel

    model_cfg, _, _ = read_config(ckpt)
    cfg = Config(model=model_cfg, parallel=ParallelConfig(tp=2))
    ps = init_parallel(cfg.parallel)
    model = build_model(cfg, ps).eval()
    load_into(model, ckpt)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids)
        model.layers[0].attn.wq.weight.mul_(2.0)  # change something, save at TP=2, read back at TP=1
    save_model(model, out_dir)
    return {"logits": logits}


@pytest.mark.dist
def test_tp2_load_and_save(imported, tmp_path):
    d, ids, want = imported
    out = tmp_path / "tp2"
    res = spawn(_tp2, 2, d / "ours", out)
    for r in res:
        assert (r["logits"] - want).abs().max().item() <= 1e-4
    (out / "config.json").write_text((d / "ours" / "config.json").read_text())
    saved, orig = read_tensors(out), read_tensors(d / "ours")
    assert set(saved) == set(orig)
    assert torch.equal(saved["layers.0.attn.wq.weight"], 2 * orig["layers.0.attn.wq.weight"])
    assert torch.equal(saved["layers.1.mlp.w2.weight"], orig["layers.1.mlp.w2.weight"])


def test_writer_is_atomic(tmp_path):
    with pytest.raises(RuntimeError):
        with CheckpointWriter(tmp_path / "c", {"format": "megatron_moe"}) as w:
            w.add_part("embed", {"embed.weight": torch.ones(2, 2)})
            raise RuntimeError("killed mid-save")
    assert not (tmp_path / "c").exists() and not list(tmp_path.iterdir())
    with CheckpointWriter(tmp_path / "c", {"format": "megatron_moe"}) as w:
        w.add_part("embed", {"embed.weight": torch.ones(2, 2)})
    with pytest.raises(UserError, match="already exists"):
        CheckpointWriter(tmp_path / "c", {})
    with pytest.raises(CheckpointError, match="not a megatron_moe checkpoint"):
        resolve(tmp_path)
