"""The MoE-layer benchmark tool (benchmarks/moe_layer.py): it compares like with like (it refuses to time two layers
that compute different functions), its CPU memory figure is the bytes saved for backward, its timer alternates the
layers and reports every time, and the CLI runs, checks parity with the per-expert loop and MixtralSparseMoeBlock
first, writes well-formed JSON and refuses bad flags. (Speed is measured by running the tool, not asserted here.)"""
import json
import sys
from pathlib import Path

import pytest
import torch

from _cli import run_cli
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level directory, not installed

from benchmarks import moe_layer as bench  # noqa: E402


def _tool(*args):
    return run_cli("tools/benchmark_moe_layer.py", *args, timeout=180)


def test_refuses_to_time_layers_that_disagree(monkeypatch):
    real = bench.build_loop

    def skewed(ours):
        loop = real(ours)
        down = loop.experts[0].down_proj
        down.weight = torch.nn.Parameter(down.weight.detach().clone() + 0.1)  # one expert's down projection off
        return loop

    monkeypatch.setattr(bench, "build_loop", skewed)
    with pytest.raises(RuntimeError, match="loop disagree"):
        bench.run_benchmark(hidden=16, ffn=8, experts=4, top_k=2, batch=1, seq=16, warmup=0, iters=1, mixtral=False)


def test_saved_bytes_of_a_known_graph():
    """y = x @ W^T saves x (for dW) and W (a parameter: not counted), then y.square() saves y: 2*3*4 + 2*3*5
    floats of 4 bytes."""
    class Square(torch.nn.Module):
        def forward(self, t):
            return t.square()

    module = torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), Square())
    x = torch.randn(2, 3, 4, requires_grad=True)
    assert bench._saved_bytes(module, x) == (2 * 3 * 4 + 2 * 3 * 5) * 4


def test_expert_flops_by_hand():
    # forward: 3 GEMMs (gate, up, down) of 2*T*K*D*F = 2*10*2*16*8; backward: twice that
    assert bench.expert_flops(10, 2, 16, 8) == 3 * (3 * 2 * 10 * 2 * 16 * 8)


def test_measure_interleaved_rotates_and_times_only_the_step():
    order, clock = [], [0.0]
    cost = {"a": iter([1.0, 2.0, 3.0, 10.0]), "b": iter([5.0, 4.0, 6.0, 0.5])}  # per step: warm-up, three timed

    def steps(name):
        def step():
            order.append(name)
            clock[0] += next(cost[name])

        def after():
            order.append(name + "/after")
            clock[0] += 100.0  # outside the timed region

        return step, after

    times = bench.measure_interleaved({"a": steps("a"), "b": steps("b")}, torch.device("cpu"), warmup=1, iters=3,
                                      clock=lambda: clock[0])
    # warm-up, then the order rotated each iteration: A B, B A, A B
    assert order[:4] == ["a", "a/after", "b", "b/after"] and order[4::2] == ["a", "b", "b", "a", "a", "b"]
    assert times == {"a": [2.0, 3.0, 10.0], "b": [4.0, 6.0, 0.5]}


def test_moe_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = _tool("--hidden", "16", "--ffn", "8", "--experts", "4", "--batch", "1", "--seq", "16", "--warmup", "0",
              "--iters", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["max_abs_diff"] < 1e-5  # the layers computed the same function before being timed
    assert set(res["max_abs_diff_by_baseline"]) == {"loop", "mixtral_hf"}
    flops = 3 * 3 * 2.0 * 16 * 2 * 16 * 8  # 3 matmuls x (fwd + 2 bwd) x 2*T*K*D*F
    assert abs(res["floor"]["median_s"] * res["floor"]["gemm_flops_per_s"] - flops) <= 1e-6 * flops
    # activation memory: the experts keep h1, h3 and x; the loop of nn.Linear also keeps silu(h1) and the product
    assert 0 < res["ours"]["saved_for_backward_bytes"] < res["loop"]["saved_for_backward_bytes"]
    assert "speedup" in r.stdout and "ours vs loop" in r.stdout


def test_moe_benchmark_without_mixtral(tmp_path):
    out = tmp_path / "bench.json"
    r = _tool("--hidden", "16", "--ffn", "8", "--experts", "4", "--top-k", "4", "--batch", "1", "--seq", "8",
              "--warmup", "0", "--iters", "1", "--no-mixtral", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert "mixtral_hf" not in res and "speedup" not in res and set(res["max_abs_diff_by_baseline"]) == {"loop"}
    assert res["max_abs_diff"] < 1e-5 and res["config"]["clock"] == "wall"


def test_moe_benchmark_cpu_time(tmp_path):
    out = tmp_path / "bench.json"
    r = _tool("--hidden", "16", "--ffn", "8", "--experts", "4", "--batch", "1", "--seq", "8", "--warmup", "0",
              "--iters", "2", "--no-mixtral", "--threads", "1", "--cpu-time", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["config"]["clock"] == "thread CPU time" and res["config"]["threads"] == 1
    for name in ("ours", "loop"):  # the split adds up to the CPU time it splits
        u = res[name]
        assert u["user_s"] >= 0 and u["system_s"] >= 0 and u["minor_faults"] >= 0
        assert abs(u["user_s"] + u["system_s"] - u["median_s"]) < 0.02 + 0.1 * u["median_s"], u
    assert r.stdout.count("minor page faults (medians)") == 2


def test_moe_benchmark_bad_input():
    r = _tool("--iters", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --warmup must be >= 0 and --iters >= 1"]
    r = _tool("--threads", "2", "--cpu-time")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --cpu-time needs --threads 1 (the time of other threads would not be counted)"]
