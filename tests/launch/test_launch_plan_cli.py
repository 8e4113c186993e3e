"""tools/plan_memory.py: exit codes, table and JSON output."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "examples/configs/llama_moe_3.5b_4of16.yaml"


def _cli(*args):
    return subprocess.run([sys.executable, "tools/plan_memory.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_fits_exit_zero_and_table():
    proc = _cli("--config", CONFIG, "--gpus", "112", "--gpu-mem", "80")
    assert proc.returncode == 0, proc.stderr
    assert "activated 3.496B" in proc.stdout and "-> fits in 80 GiB" in proc.stdout


def test_does_not_fit_suggests_and_json():
    proc = _cli("--config", CONFIG, "--gpus", "8", "--gpu-mem", "40")
    assert proc.returncode == 1
    assert "does NOT fit" in proc.stdout and "suggested:" in proc.stdout and "overrides: parallel.tp=" in proc.stdout
    proc = _cli("--config", CONFIG, "--gpus", "8", "--gpu-mem", "40", "--json")
    data = json.loads(proc.stdout)
    assert data["fits"] is False and data["suggested"]["total"] <= 36.0
    assert data["configured"]["layout"]["ep"] == 8


def test_bad_input_exit_two():
    proc = _cli("--config", "missing.yaml", "--gpus", "8")
    assert proc.returncode == 2 and proc.stderr.startswith("error: config file missing.yaml")
    proc = _cli("--config", CONFIG, "--gpus", "6")
    assert proc.returncode == 2 and "not divisible by ep*etp=8*1" in proc.stderr
