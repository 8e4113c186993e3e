"""Evaluation, inspection, loss-curve plot and the CLIs' one-line errors (dense checkpoint; no downloads)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _cli import run_cli
from megatron_moe import load_model
from megatron_moe.analysis.inspect import format_report, inspect_checkpoint
from megatron_moe.analysis.plots import plot_loss_curve, read_metrics
from megatron_moe.checkpoint import CheckpointWriter, config_dict
from megatron_moe.config import ModelConfig, MoEConfig
from megatron_moe.analysis.perplexity import domain_windows, evaluate_domains, open_domains, parse_domains
from megatron_moe.data import open_indexed

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1, vocab_size=64,
                   max_seq_len=16)


def _write_indexed(prefix, docs):
    from megatron_moe.data._mcore import IndexedDatasetBuilder

    b = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for d in docs:
        b.add_item(torch.tensor(d, dtype=torch.int64))
        b.end_document()
    b.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from megatron_moe.config import Config
    from megatron_moe.model import build_model, init_weights

    d = tmp_path_factory.mktemp("tools")
    model = build_model(Config(model=TINY))
    init_weights(model, seed=3, std=0.2)
    with CheckpointWriter(d / "ck", config_dict(TINY, MoEConfig())) as w:
        w.add_part("all", {k: v.detach() for k, v in model.state_dict().items()})
        w.write_json("construction.json", {"method": "random", "seed": 1227, "assignment": [[0, 1]]})
    rng = np.random.default_rng(0)
    a = _write_indexed(d / "alpha_text_document", [list(rng.integers(0, 64, n)) for n in (20, 7, 30)])
    b = _write_indexed(d / "beta", [list(rng.integers(0, 64, 40))])
    return d, a, b


def test_windows_are_disjoint_and_in_order(ckpt):
    d, a, _ = ckpt
    ds = open_indexed(a)
    w = list(domain_windows([ds], 8))
    assert len(w) == 57 // 9 and all(len(x) == 9 for x in w)
    flat = np.concatenate([np.asarray(ds[i]) for i in range(len(ds))])
    assert np.array_equal(np.concatenate(w), flat[:len(w) * 9])


def test_evaluate_matches_direct_cross_entropy(ckpt):
    d, a, b = ckpt
    model = load_model(d / "ck")
    doms = parse_domains([a, f"b={b}"])
    assert list(doms) == ["alpha", "b"]
    res = evaluate_domains(model, open_domains(doms, TINY.vocab_size), seq_len=8, batch_size=2, progress=False)
    w = torch.from_numpy(np.stack(list(domain_windows([open_indexed(b)], 8))))
    with torch.no_grad():
        want = F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()).item()
    assert res["b"]["tokens"] == 4 * 8 and abs(res["b"]["loss"] - want) < 1e-5
    assert abs(res["b"]["ppl"] - math.exp(want)) < 1e-3 and res["alpha"]["sequences"] == 6


def test_inspect_dense(ckpt):
    d, _, _ = ckpt
    info = inspect_checkpoint(d / "ck")
    want = 64 * 16 * 2 + 2 * (16 * 2 + 16 * 16 * 2 + 16 * 8 * 2 + 16 * 32 * 3) + 16
    assert info["params"]["total"] == want == info["params"]["activated"]
    assert info["construction"] == {"method": "random", "seed": 1227}
    assert info["loadable"]["tp"] == [1] and "seed=1227" in format_report(info)


def test_loss_curve(tmp_path):
    lines = [json.dumps({"step": s, "loss": 5.0 - 0.1 * s}) for s in range(1, 11)]
    lines.append(json.dumps({"step": 10, "valid_loss": {"wiki": 4.2, "code": 3.9}}))
    lines.append('{"step": 11, "loss": 4.')  # cut by a crash
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    train, valid = read_metrics(tmp_path)
    assert train[0] == (1, 4.9) and len(train) == 10 and valid == {"wiki": [(10, 4.2)], "code": [(10, 3.9)]}
    png = plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "p" / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def _cli(*args):
    return run_cli(*args, timeout=120)


def test_cli_inspect_evaluate_and_errors(ckpt, tmp_path):
    d, a, _ = ckpt
    r = _cli("tools/inspect_checkpoint.py", str(d / "ck"))
    assert r.returncode == 0 and "activated" in r.stdout and "method=random" in r.stdout
    r = _cli("tools/evaluate.py", "--load", str(d / "ck"), "--data", a, "--seq-len", "8", "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e.json").read_text())["alpha"]["tokens"] == 48
    r = _cli("tools/export_hf.py", "--load", str(tmp_path / "missing"), "--save", str(tmp_path / "o"), "--format", "llama")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "no such checkpoint" in r.stderr
    r = _cli("tools/evaluate.py", "--load", str(d / "ck"), "--data", str(tmp_path / "nodata"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = _cli("tools/plot_routing.py", "--load", str(d / "ck"), "--data", a, "--out", str(tmp_path / "pl"))
    assert r.returncode == 2 and "dense model" in r.stderr
