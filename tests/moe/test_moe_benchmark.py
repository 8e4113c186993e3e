"""Smoke tests of the MoE-layer benchmark tool: it runs, checks parity with the per-expert loop and
MixtralSparseMoeBlock first, writes well-formed JSON and refuses bad flags. (Speed is measured by running the tool,
not asserted here.)"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(*args):
    return subprocess.run([sys.executable, "tools/benchmark_moe_layer.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


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
    assert res["max_possible_speedup"] == res["mixtral_hf"]["median_s"] / res["floor"]["median_s"]
    assert res["vs_loop"] == res["loop"]["median_s"] / res["ours"]["median_s"]
    assert res["ours_over_floor"] == res["ours"]["median_s"] / res["floor"]["median_s"]
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
    assert res["max_abs_diff"] < 1e-5 and res["vs_loop"] > 0 and res["config"]["clock"] == "wall"


def test_moe_benchmark_cpu_time(tmp_path):
    out = tmp_path / "bench.json"
    r = _tool("--hidden", "16", "--ffn", "8", "--experts", "4", "--batch", "1", "--seq", "8", "--warmup", "0",
              "--iters", "2", "--no-mixtral", "--threads", "1", "--cpu-time", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["config"]["clock"] == "thread CPU time" and res["config"]["threads"] == 1
    assert res["ours"]["median_s"] > 0 and res["floor"]["median_s"] > 0


def test_moe_benchmark_bad_input():
    r = _tool("--iters", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --warmup must be >= 0 and --iters >= 1"]
    r = _tool("--threads", "2", "--cpu-time")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --cpu-time needs --threads 1 (the time of other threads would not be counted)"]
