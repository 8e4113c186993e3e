"""The MoE-layer benchmark tool (benchmarks/moe_layer.py): it compares like with like (it refuses to time two layers
that compute different functions), its CPU memory figure is the bytes saved for backward, its timer alternates the
two layers and reports medians, and the CLI runs and refuses bad flags. (Speed is measured by running the tool,
not asserted here.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level directory, not installed

from benchmarks import moe_layer as bench  # noqa: E402


def _tool(*args):
    return subprocess.run([sys.executable, "tools/benchmark_moe_layer.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_refuses_to_time_layers_that_disagree(monkeypatch):
    real = bench.build_pair

    def skewed(*a, **k):
        ours, hf = real(*a, **k)
        with torch.no_grad():
            hf.experts.down_proj[0].add_(0.1)  # one expert's down projection off
        return ours, hf

    monkeypatch.setattr(bench, "build_pair", skewed)
    with pytest.raises(RuntimeError, match="disagree"):
        bench.run_benchmark(hidden=16, ffn=8, experts=4, top_k=2, batch=1, seq=16, warmup=0, iters=1)


def test_saved_bytes_of_a_known_graph():
    """y = x @ W^T saves x (for dW) and W (for dx), then y.square() saves y: 2*3*4 + 5*4 + 2*3*5 floats of 4 bytes."""
    lin = torch.nn.Linear(4, 5, bias=False)
    x = torch.randn(2, 3, 4, requires_grad=True)
    assert bench._saved_bytes(lambda t: lin(t).square(), x) == (2 * 3 * 4 + 5 * 4 + 2 * 3 * 5) * 4


def test_expert_flops_by_hand():
    # forward: 3 GEMMs (gate, up, down) of 2*T*K*D*F = 2*10*2*16*8; backward: twice that
    assert bench.expert_flops(10, 2, 16, 8) == 3 * (3 * 2 * 10 * 2 * 16 * 8)


def test_measure_interleaved_alternates_and_reports_medians(monkeypatch):
    order, clock = [], [0.0]
    # per module: the warm-up step, three timed steps, the untimed memory pass
    cost = {"a": iter([1.0, 2.0, 3.0, 10.0, 0.0]), "b": iter([5.0, 4.0, 6.0, 0.5, 0.0])}

    class Timed(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.w = name, torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            order.append(self.name)
            clock[0] += next(cost[self.name])
            return x * self.w

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    x = torch.ones(1, 2, 1)
    res = bench.measure_interleaved({"a": Timed("a"), "b": Timed("b")}, x, warmup=1, iters=3)
    assert order[:8] == ["a", "b"] * 4  # warm-up, then A B A B A B (the memory pass follows)
    assert res["a"]["median_s"] == 3.0 and res["b"]["median_s"] == 4.0
    assert res["a"]["tokens_per_s"] == 2 / 3.0


def test_moe_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = _tool("--hidden", "16", "--ffn", "8", "--experts", "4", "--batch", "1", "--seq", "16", "--warmup", "0",
              "--iters", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["config"]["hidden"] == 16 and res["config"]["experts"] == 4
    assert set(res) >= {"ours", "mixtral_hf", "floor", "speedup", "max_possible_speedup"}
    assert "speedup" in r.stdout


def test_moe_benchmark_bad_input():
    r = _tool("--iters", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --warmup must be >= 0 and --iters >= 1"]
