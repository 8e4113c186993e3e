"""tools/benchmark_kernels.py --smoke runs on CPU and writes a well-formed JSON."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark_kernels.py"), "--smoke",
                           "--device", "cpu", "--dtype", "float32", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] is True and res["device"] == "cpu"
    mlp = res["mlp"][0]
    for key in ("moe_kernels_fwd", "moe_kernels_fwd_bwd", "loop_fwd", "loop_fwd_bwd"):
        assert mlp[key]["us"] > 0 and mlp[key]["tflops"] > 0, key
    assert mlp["speedup_vs_loop_fwd"] > 0
    gate = res["gating"][0]
    assert gate["moe_kernels"]["us"] > 0 and gate["speedup_vs_eager"] > 0
    assert res["autotuned"] == {}  # nothing is autotuned on CPU
    assert "expert MLP" in proc.stdout and "gating" in proc.stdout
    assert not (tmp_path / "bench.json.tmp").exists()


def test_benchmark_refuses_full_run_on_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark_kernels.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")


def test_benchmarks_are_not_in_the_installed_packages():
    import importlib.util

    assert importlib.util.find_spec("moe_kernels.bench") is None
    assert (ROOT / "benchmarks" / "kernels.py").is_file()
    assert "benchmarks" not in (ROOT / "setup.py").read_text()  # not listed in packages / package_dir
