"""Under torchrun: one error line, and elastic restarts that resume to the same losses.

- `megatron-moe launch` (torchrun's options) refuses bad input in its preflight before any worker starts, and
  turns a worker's bad-input failure into that worker's one line and exit code 2 (no ChildFailedError traceback).
- plain torchrun: rank 0 prints the line once; torchrun adds its summary (exit 1) whose root cause carries it.
- `--max-restarts 1`: rank 1 dies (os._exit(9)) at step 3 after the step-2 checkpoint; the restarted job resumes
  and ends with the same per-step losses and the same final weights as an uninterrupted run (bitwise, CPU).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _train_helpers import tiny_config, write_corpus

ROOT = Path(__file__).resolve().parents[2]
FAULT = ROOT / "tests" / "training" / "_fault_train.py"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    cfg = tiny_config(write_corpus(root / "data"), root / "run", moe=True, train_steps=5, save_interval=2)
    cfg.moe.router, cfg.moe.noisy_gate = "noisy_topk", True
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return root, path


def _run(args, env=None, timeout=300):
    full = {k: v for k, v in os.environ.items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**full, **(env or {})})


def _launch(*args):
    return ["-m", "megatron_moe.cli", "launch", "--standalone", "--nproc-per-node", "2", *args]


def _errors(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.dist
def test_launch_preflight_refuses_before_workers(setup, tmp_path):
    _, cfg = setup
    r = _run(_launch("-m", "megatron_moe.train", "--config", cfg, f"logging.run_dir={tmp_path / 'r'}",
                     "parallel.ep=3"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert _errors(r.stderr) == ["error: world size 2 is not divisible by ep*etp=3*1"], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "torchrun" not in r.stderr.lower() and not (tmp_path / "r").exists()


@pytest.mark.dist
def test_launch_reports_a_worker_error_once(setup, tmp_path):
    _, cfg = setup  # lr 1e30 passes every check, then training diverges: TrainingError on both ranks
    r = _run(_launch("-m", "megatron_moe.train", "--config", cfg, f"logging.run_dir={tmp_path / 'r'}",
                     "parallel.ep=2", "train.lr=1e30", "train.warmup_steps=0", "train.max_bad_steps=1"))
    assert r.returncode == 2, r.stderr[-3000:]
    errors = _errors(r.stderr)
    assert len(errors) == 1 and "consecutive steps with a non-finite loss" in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr


@pytest.mark.dist
def test_plain_torchrun_prints_the_line_once(setup, tmp_path):
    _, cfg = setup
    r = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "megatron_moe.train",
              "--config", cfg, f"logging.run_dir={tmp_path / 'r'}", "parallel.etp=0"])
    assert r.returncode == 1  # torchrun's own code for a failed worker (docs/launch.md)
    msg = "error: parallel.etp=0 must be >= 1 (or null for 1)"
    assert _errors(r.stderr) == [msg], r.stderr[-3000:]
    assert f"traceback : {msg}" in r.stderr  # the root cause of torchrun's summary names it


def _losses(run: Path) -> dict:
    """step -> loss, the last record of each step (a restarted run logs the steps after its checkpoint again)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


@pytest.mark.dist
def test_elastic_restart_resumes_exactly(setup, tmp_path):
    from megatron_moe.checkpoint import read_tensors

    _, cfg = setup
    common = ["--config", cfg, "parallel.ep=2"]
    ref = _run(_launch("-m", "megatron_moe.train", *common, f"logging.run_dir={tmp_path / 'ref'}"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _run(_launch("--max-restarts", "1", FAULT, *common, f"logging.run_dir={tmp_path / 'killed'}"),
                  env={"FAULT_RANK": "1", "FAULT_STEP": "3", "FAULT_MARKER": str(tmp_path / "died")})
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert (tmp_path / "died").exists()  # rank 1 did die in the first attempt
    want, got = _losses(tmp_path / "ref"), _losses(tmp_path / "killed")
    assert sorted(got) == [1, 2, 3, 4, 5] and got == want
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if "loss" in json.loads(x)] == [1, 2, 3, 4, 5]  # died before 3
    final_ref = read_tensors(tmp_path / "ref" / "checkpoints" / "step_00000005")
    final_got = read_tensors(tmp_path / "killed" / "checkpoints" / "step_00000005")
    assert final_ref.keys() == final_got.keys()
    for name, t in final_ref.items():
        assert torch.equal(t, final_got[name]), name
