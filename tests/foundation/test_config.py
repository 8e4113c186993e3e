"""Config loading, overrides, presets and one-line validation errors."""
import ast
import inspect

import pytest

from megatron_moe import config as C
from megatron_moe.config import ConfigError, load_config


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  preset: tiny\nmoe:\n  num_experts: 4\n  top_k: 2\ndata:\n  seq_len: 64\n")
    cfg = load_config(p, ["train.lr=1e-3", "parallel.ep=2", "moe.router=softmax_topk", "model.num_layers=3"])
    assert cfg.model.hidden_size == 64 and cfg.model.num_layers == 3
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.parallel.ep == 2 and cfg.moe.router == "softmax_topk"
    assert cfg.moe.scale == 2.0  # E / k by default
    cfg.validate(world_size=2)


def test_presets():
    for name, tp in [("llama2-7b", 8), ("llama2-13b", 8), ("tiny", 2)]:
        cfg = load_config(None, [f"model.preset={name}", "data.seq_len=64"])
        cfg.validate(world_size=tp)
    assert load_config(None, ["model.preset=llama2-13b"]).model.hidden_size == 5120


@pytest.mark.parametrize("overrides, world, message", [
    (["model.preset=llama2-7b", "parallel.tp=3"], 3, "tp=3 does not divide num_heads=32"),
    (["model.preset=tiny", "data.seq_len=64", "moe.num_experts=4", "parallel.ep=2"], 3,
     "world size 3 is not divisible by ep*etp=2*1"),
    (["model.preset=tiny", "data.seq_len=64", "moe.num_experts=4", "parallel.ep=3"], 3, "ep=3 does not divide num_experts=4"),
    (["model.preset=tiny", "data.seq_len=64", "moe.num_experts=4", "moe.top_k=5"], 1, "moe.top_k=5 must be between 1"),
    (["model.preset=tiny", "data.seq_len=64", "moe.num_experts=5"], 1, "intermediate_size=192 is not divisible by moe.num_experts=5"),
    (["model.preset=tiny", "data.seq_len=64", "moe.num_experts=4", "moe.router=bogus"], 1, "moe.router='bogus' is not one of"),
    (["model.preset=tiny", "data.seq_len=512"], 1, "data.seq_len=512 exceeds model.max_seq_len=128"),
    (["model.preset=tiny", "data.seq_len=64", "train.global_batch_size=3"], 2, "global_batch_size=3 is not divisible"),
    (["model.preset=tiny", "data.seq_len=64", "parallel.sp=true"], 1, "parallel.sp=true needs tp > 1"),
    (["model.preset=tiny", "data.seq_len=64", "train.sharding=zero3"], 1,
     "train.sharding='zero3' is not one of none, zero1, zero2, fsdp"),
    (["model.preset=tiny", "data.seq_len=64", "train.sharding=zero1", "train.offload_optimizer=true"], 2,
     "train.offload_optimizer=true needs train.sharding zero2 or fsdp"),
])
def test_validation_errors_name_the_numbers(overrides, world, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides).validate(world_size=world)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_keys_and_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key config.train.lrr .*did you mean 'lr'"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.lr='fast' should be of type float"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="train.zero1 was replaced by train.sharding"):  # the renamed key
        load_config(None, ["train.zero1=true"])
    with pytest.raises(ConfigError, match="unknown model preset 'llama9'"):
        load_config(None, ["model.preset=llama9"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["model.preset=tiny", "moe.num_experts=4", "data.seq_len=64",
                             "data.domains=[{name: code, prefixes: [a/b]}]"])
    C.dump_config(cfg, tmp_path / "r.yaml")
    again = load_config(tmp_path / "r.yaml")
    assert again == cfg
    assert again.data.domains[0].name == "code"


def test_every_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(C))
    missing = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and node.name != "ConfigError":
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                            and isinstance(nxt.value.value, str)):
                        missing.append(f"{node.name}.{stmt.target.id}")
    assert not missing, f"fields without a docstring: {missing}"
