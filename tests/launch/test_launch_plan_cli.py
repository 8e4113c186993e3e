"""tools/plan_memory.py: exit codes, table and JSON output."""
import json
from pathlib import Path

from _cli import run_cli
ROOT = Path(__file__).resolve().parents[2]
CONFIG = "examples/configs/llama_moe_3.5b_4of16.yaml"


def _cli(*args):
    return run_cli("tools/plan_memory.py", *args, timeout=120)


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
    proc = _cli("--config", CONFIG, "--gpus", "0")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --gpus=0")


def test_layout_that_does_not_divide_the_gpus_searches():
    """ep=8 on 4 GPUs is no error: the search over layouts for 4 GPUs says what fits (exit 1: the configured
    layout does not run)."""
    proc = _cli("--config", CONFIG, "--gpus", "4", "--gpu-mem", "80")
    assert proc.returncode == 1, proc.stderr
    assert "not divisible by ep*etp=8*1" in proc.stdout and "searching layouts for 4 GPUs" in proc.stdout
    assert "suggested:" in proc.stdout and "-> fits in 80 GiB" in proc.stdout
    data = json.loads(_cli("--config", CONFIG, "--gpus", "4", "--gpu-mem", "80", "--json").stdout)
    lay = data["suggested"]["layout"]
    assert data["configured"] is None and "not divisible" in data["configured_invalid"]
    assert 4 % (lay["ep"] * lay["etp"]) == 0 and data["suggested"]["total"] <= 0.9 * 80
    # 40 GB cards: only sharding what the 3.5B model replicates makes it fit on 4 of them
    data = json.loads(_cli("--config", CONFIG, "--gpus", "4", "--gpu-mem", "40", "--json").stdout)
    assert data["suggested"]["layout"]["sharding"] in ("zero2", "fsdp"), data["suggested"]
