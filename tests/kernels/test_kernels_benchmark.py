"""tools/benchmark_kernels.py: its baselines compute what the kernels compute (a ratio against a baseline that does
something else would mean nothing), its timer reports the median, and the CLI runs and refuses bad runs.
(The timings themselves are measurements, not assertions.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level directory, not installed

from benchmarks import kernels as bench  # noqa: E402
from kernel_cases import CASES, assert_close, make_logits, make_mlp_inputs  # noqa: E402
from moe_kernels import reference as ref  # noqa: E402


@pytest.mark.parametrize("c", [CASES[4], CASES[5], CASES[9]], ids=["k2_e8", "k4_e8", "other_rank"])
def test_grouped_mm_baseline_computes_the_expert_mlp(c):
    x, w, idx, w1, w3, w2 = make_mlp_inputs(c)
    try:
        got = bench.grouped_mm_mlp(x, w, idx, w1, w3, w2)
    except (RuntimeError, NotImplementedError) as exc:  # the benchmark reports these as n/a, too
        pytest.skip(f"torch._grouped_mm unavailable here: {exc}")
    assert_close(got, ref.moe_mlp(x, w, idx, w1, w3, w2), 1e-5, 1e-5, "grouped_mm baseline")


@pytest.mark.parametrize("c", [CASES[3], CASES[4], CASES[5]], ids=["k1_e8", "k2_e8", "k4_e8"])
def test_eager_gating_baseline_computes_the_gating(c):
    logits, _ = make_logits(c)
    w, idx, counts = bench.eager_gating(logits, c.K)
    rw, ridx, rcounts = ref.topk_gating(logits, c.K)
    assert torch.equal(idx, ridx)
    assert torch.equal(counts.long(), rcounts)
    assert_close(w, rw, 1e-6, 1e-7, "eager gating weights")


def test_time_fn_reports_the_median_of_the_timed_runs(monkeypatch):
    """Warm-up runs are not timed; the result is the median of `iters` runs, in microseconds."""
    durations = iter([5.0, 7.0, 0.003, 0.001, 0.100])  # seconds: 2 warm-up runs, then 3 timed ones
    clock = [0.0]
    runs = []

    def fn():
        runs.append(1)
        clock[0] += next(durations)

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    us = bench.time_fn(fn, torch.device("cpu"), warmup=2, iters=3)
    assert len(runs) == 5
    assert us == pytest.approx(3000.0)


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark_kernels.py"), "--smoke",
                           "--device", "cpu", "--dtype", "float32", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] is True and res["device"] == "cpu"
    assert [r["shape"]["name"] for r in res["mlp"]] == [s.name for s in bench.SMOKE_MLP_SHAPES]
    assert [r["shape"]["name"] for r in res["gating"]] == [s.name for s in bench.SMOKE_GATE_SHAPES]
    assert res["autotuned"] == {}  # nothing is autotuned on CPU
    assert "expert MLP" in proc.stdout and "gating" in proc.stdout
    assert not (tmp_path / "bench.json.tmp").exists()


def test_benchmark_refuses_full_run_on_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark_kernels.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")


def test_benchmarks_are_not_in_the_installed_packages():
    """What the installed distribution ships (its metadata, as pip recorded it), not what setup.py's text says."""
    import importlib.metadata
    import importlib.util

    assert importlib.util.find_spec("moe_kernels.bench") is None
    top = importlib.metadata.distribution("megatron_moe").read_text("top_level.txt")
    assert top is not None and set(top.split()) == {"megatron_moe", "moe_kernels"}, top
