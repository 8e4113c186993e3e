"""Bad dense checkpoints give one clear line (library) and exit code 2 (tool)."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megatron_moe.construct.dense import open_dense
from megatron_moe.errors import CheckpointError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture()
def hf_dir(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      vocab_size=64, max_position_embeddings=32)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def one_line_error(path, match):
    with pytest.raises(CheckpointError) as err:
        r = open_dense(path)
        for n in r.names():
            r.get(n)
    msg = str(err.value)
    assert "\n" not in msg and match in msg, msg


def test_missing_dir(tmp_path):
    one_line_error(tmp_path / "nope", "no such checkpoint directory")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x").mkdir()
    one_line_error(tmp_path / "x", "neither an HF checkpoint")


def test_truncated_safetensors(hf_dir):
    f = hf_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    one_line_error(hf_dir, "truncated or corrupt")


def test_missing_weights_file(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    one_line_error(hf_dir, "no model.safetensors")


def test_missing_key(hf_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(hf_dir / "model.safetensors")
    del sd["model.layers.0.mlp.up_proj.weight"]
    save_file(sd, hf_dir / "model.safetensors")
    one_line_error(hf_dir, "lacks 1 tensors, e.g. 'model.layers.0.mlp.up_proj.weight'")


def test_shape_disagrees_with_config(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    one_line_error(hf_dir, "implies (48, 32)")


def test_unsupported_architecture(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    one_line_error(hf_dir, "unsupported architecture")


def test_meta_missing_shard(tmp_path):
    d = tmp_path / "meta"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 64}))
    torch.save({}, d / "consolidated.01.pth")
    one_line_error(d, "a shard is missing")


def test_tool_exit_code(tmp_path, hf_dir):
    f = hf_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    r = subprocess.run([sys.executable, str(ROOT / "tools/import_llama.py"), "--load", str(hf_dir),
                        "--save", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_meta_missing_last_shard(tmp_path):
    """Two model-parallel shards with the last one deleted: the message says a shard is missing."""
    from _meta_layout import write_meta

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      vocab_size=64, max_position_embeddings=16)
    write_meta(LlamaForCausalLM(cfg), tmp_path / "meta", num_shards=2)
    (tmp_path / "meta" / "consolidated.01.pth").unlink()
    one_line_error(tmp_path / "meta", "which takes 2 shards: a shard is missing")
