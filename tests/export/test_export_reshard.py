"""Offline resharding on real gloo ranks: EP=2 -> EP=1 -> EP=2 keeps every tensor bitwise identical."""
import json
from pathlib import Path

import pytest
import torch

from _cli import run_cli
from _moe_helpers import make_moe
from megatron_moe.checkpoint import read_tensors
from megatron_moe.errors import CheckpointError
from megatron_moe.checkpoint.reshard import reshard

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.dist
def test_ep2_ep1_ep2_identical(tmp_path):
    make_moe(tmp_path / "src", router="noisy_topk", gate_network="mlp")
    (tmp_path / "src" / "construction.json").write_text(json.dumps({"method": "random", "seed": 3}))
    a = reshard(tmp_path / "src", tmp_path / "ep2", tp=1, ep=2)
    r = run_cli("tools/reshard_checkpoint.py", "--load", a, "--save", tmp_path / "ep1", "--ep", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    c = reshard(tmp_path / "ep1", tmp_path / "ep2b", tp=1, ep=2)
    src, ta, tb, tc = (read_tensors(p) for p in (tmp_path / "src", a, tmp_path / "ep1", c))
    assert set(src) == set(ta) == set(tb) == set(tc)
    for n in src:
        assert torch.equal(src[n], ta[n]) and torch.equal(ta[n], tb[n]) and torch.equal(tb[n], tc[n]), n
    assert json.loads((c / "config.json").read_text())["saved_layout"] == {"tp": 1, "ep": 2, "etp": 1}
    assert (c / "construction.json").is_file()


def test_reshard_bad_inputs(tmp_path):
    make_moe(tmp_path / "src")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        reshard(tmp_path / "missing", tmp_path / "o", ep=2)
    (tmp_path / "exists").mkdir()
    from megatron_moe.atomic import OutputError

    with pytest.raises(OutputError, match="already exists"):
        reshard(tmp_path / "src", tmp_path / "exists", ep=2)
    from megatron_moe.config import ConfigError

    with pytest.raises(ConfigError, match="ep=3 does not divide num_experts=4"):
        reshard(tmp_path / "src", tmp_path / "o", ep=3)
    assert not (tmp_path / "o").exists()
