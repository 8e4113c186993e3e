"""The reproduction end to end at the quick budget (the same code as the documented full run): the dense base is
a language model (beats a per-domain unigram model on every domain), every lossless split is lossless with all
experts on, the weight-scaled virtual-group upcycling starts exactly at the dense model, continual pre-training
lowers every row's validation loss, and a rerun reuses every cached stage."""
import json
import time

import pytest

from megatron_moe.reproduce import reproduce
from megatron_moe.reproduce.methods import LOSSLESS, ROWS


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    t0 = time.perf_counter()
    res = reproduce(out, "quick")
    return out, res, time.perf_counter() - t0


def _mean(losses):
    return sum(losses.values()) / len(losses)


def test_dense_base_is_a_language_model(quick):
    _, res, _ = quick
    for d, loss in res["base"]["valid"].items():
        assert loss < res["unigram"][d] - 0.2, (d, loss, res["unigram"][d])  # > 20% lower perplexity


def test_every_row_ran_and_splits_are_lossless(quick):
    _, res, _ = quick
    rows = {r["row"]: r for r in res["rows"]}
    assert list(rows) == list(ROWS)
    for name in LOSSLESS:
        assert rows[name]["verify_delta"] <= 1e-4, name
    for d, loss in res["base"]["valid"].items():  # weight scaling: the upcycled MoE starts as the dense model
        assert abs(rows["upcycle-vg"]["split_loss"][d] - loss) <= 1e-4
        assert rows["random"]["split_loss"][d] > loss  # a split that is not weight-scaled does lose quality


def test_continual_pretraining_lowers_every_rows_loss(quick):
    _, res, _ = quick
    for r in res["rows"]:
        assert _mean(r["cpt_loss"]) < _mean(r["split_loss"]), (r["row"], r["split_loss"], r["cpt_loss"])
        assert len(r["curve"]) >= 2
        if r["experts"]:
            assert 0 <= r["max_vio"] <= r["experts"] - 1 and r["cv"] >= 0


def test_outputs_and_cache(quick):
    out, res, _ = quick
    for name in ("results.json", "report.md", "cpt_curves.png", "expert_load.png"):
        assert (out / name).stat().st_size > 500, name
    report = (out / "report.md").read_text()
    assert all(f"| {r} |" in report for r in ROWS)
    reports = {"results.json", "report.md", "cpt_curves.png", "expert_load.png"}
    stages = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in reports}
    assert len(stages) > 20
    again = reproduce(out, "quick")  # every stage and row is reused: no stage file is written again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in reports} == stages
    assert json.dumps(again["rows"], sort_keys=True) == json.dumps(res["rows"], sort_keys=True)
