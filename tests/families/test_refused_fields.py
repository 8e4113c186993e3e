"""No config field is silently ignored: each field below changes the computation and is not modelled, so import
refuses it with one line naming it, exit code 2, and nothing written. Sliding windows are modelled as a limit."""
import json

import pytest
import torch

from _families import make_model, save
from megatron_moe.cli import run_command


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save(make_model("llama3"), tmp_path_factory.mktemp("refused") / "hf", "4.x")


def _variant(src, dst, **changes):
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    return dst


REFUSED = [
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_type='dynamic' is not implemented"),
    (dict(rope_scaling={"rope_type": "longrope", "factor": 2.0}), "rope_type='longrope' is not implemented"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs 'original_max_position_embeddings'"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "beta_fast": 3}), "'beta_fast' is not used by rope_type=linear"),
    (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    (dict(mlp_bias=True), "mlp_bias=true"),
    (dict(attention_dropout=0.1), "attention_dropout=0.1 is not supported"),
    (dict(quantization_config={"quant_method": "gptq"}), "field quantization_config="),
    (dict(partial_rotary_factor=0.5), "field partial_rotary_factor=0.5 is not known"),
    (dict(qk_layernorm=True), "field qk_layernorm=True is not known"),
    (dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"]), "unsupported architecture ['Qwen3ForCausalLM']"),
    (dict(architectures=["LlamaForSequenceClassification"]), "is not LlamaForCausalLM"),
]


@pytest.mark.parametrize("changes,fragment", REFUSED, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(REFUSED)])
def test_refused_field(llama_dir, tmp_path, capsys, changes, fragment):
    src = _variant(llama_dir, tmp_path / "in", **changes)
    code = run_command("import", ["--load", str(src), "--save", str(tmp_path / "out"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_ignore_config_field_accepts_a_checked_field(llama_dir, tmp_path, capsys):
    src = _variant(llama_dir, tmp_path / "in", my_note="trained on 1T tokens")
    assert run_command("import", ["--load", str(src), "--save", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "my_note" in capsys.readouterr().err
    assert run_command("import", ["--load", str(src), "--save", str(tmp_path / "b"), "--no-progress",
                                  "--ignore-config-field", "my_note"]) == 0


def test_sliding_window_is_a_limit(tmp_path):
    """Mistral v0.1-style window 16 < context 256: imported; sequences up to the window compute exactly as
    transformers; longer sequences and training seq_len are refused."""
    import transformers

    from megatron_moe import load_model
    from megatron_moe.config import Config, ConfigError, DataConfig, DomainConfig
    from megatron_moe.construct.import_dense import import_dense

    cfg = transformers.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=64, max_position_embeddings=256,
                                     sliding_window=16)
    hf = transformers.MistralForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    import_dense(tmp_path / "hf", tmp_path / "ours", progress=False)
    model = load_model(tmp_path / "ours")
    assert model.cfg.sliding_window == 16
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4
        with pytest.raises(ValueError, match="exceeds the sliding window"):
            model(torch.zeros(1, 17, dtype=torch.long))
    run = Config(model=model.cfg, data=DataConfig(domains=[DomainConfig(name="a", prefixes=["x"])], seq_len=32))
    with pytest.raises(ConfigError, match="exceeds the sliding window 16"):
        run.validate()


def test_qwen2_sliding_only_when_used(tmp_path):
    from megatron_moe.formats.hf_config import model_config_from_hf

    base = json.loads(save(make_model("qwen2"), tmp_path / "q").joinpath("config.json").read_text())
    base.update(sliding_window=32)
    assert model_config_from_hf({**base, "use_sliding_window": False}).sliding_window is None
    on = {**base, "use_sliding_window": True, "max_window_layers": 1}
    on.pop("layer_types", None)
    assert model_config_from_hf(on).sliding_window == 32
