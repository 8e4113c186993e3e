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


def test_downstream_columns_from_a_task_directory(quick, monkeypatch, tmp_path):
    """Given a task directory, every row and the dense base get the harness's scores on its tasks, computed
    in-process from that model's run; rerunning reuses them (CI's reproduction itself stays perplexity-only)."""
    from pathlib import Path

    import lm_eval.evaluator

    from megatron_moe.analysis.downstream import evaluate_tasks
    from megatron_moe.reproduce.downstream import Downstream

    out, _, _ = quick
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the task files name their data from the repo root
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for key in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")  # offline
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda res: None)  # seconds of `pip list` per model
    spec = Downstream(include_path="tests/evaluate/tasks", tasks=["toy_mc", "toy_cloze"], limit=6)
    res = reproduce(out, "quick", rows=["random", "upcycle-vg"], downstream=spec)
    base_run = next(out.glob("dense-*"))
    for name, run, scored in [("base", base_run, res["base"]["downstream"])] + [
            (r["row"], next(out.glob(f"cpt-{r['row']}-*")), r["downstream"]) for r in res["rows"]]:
        want = evaluate_tasks(run, ["toy_mc", "toy_cloze"], include_path=["tests/evaluate/tasks"], limit=6,
                              tokenizer=next(out.glob("tokenizer-*")) / "tokenizer.model", bootstrap_iters=0,
                              progress=False)
        assert scored["toy_mc"]["acc"] == want["results"]["toy_mc"]["acc,none"], name
        assert scored["toy_cloze"]["perplexity"] == pytest.approx(want["results"]["toy_cloze"]["perplexity,none"])
    report = (out / "report.md").read_text()
    assert "| model | toy_mc acc | toy_cloze acc |" in report and "| upcycle-vg |" in report.split("Downstream")[1]
    assert len(list(out.glob("cpt-*/downstream-*.json"))) == 2 and len(list(out.glob("dense-*/downstream-*.json"))) == 1
    scores = {p: p.stat().st_mtime_ns for p in out.glob("*/downstream-*.json")}
    again = reproduce(out, "quick", rows=["random", "upcycle-vg"], downstream=spec)
    assert again["base"]["downstream"] == res["base"]["downstream"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/downstream-*.json")} == scores  # reused, not rescored
