"""The entry point: `python -m megatron_moe.train` and under torchrun (2 ranks, EP=2), automatic resume, errors."""
import json
import subprocess
import sys

import pytest
import yaml

from _train_helpers import tiny_config, write_corpus


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(write_corpus(root / "data"), root / "run", moe=True, train_steps=2, eval_interval=2)
    cfg.moe.router, cfg.moe.noisy_gate = "noisy_topk", True  # noise breaks the zero-init router's ties
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return root, path


def _run(args, timeout=180):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


@pytest.mark.dist
def test_torchrun_ep2_then_resume(config_file):
    root, path = config_file
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "megatron_moe.train", "--config", str(path), "parallel.ep=2"]
    first = _run(base)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(base + ["train.train_steps=3"])
    assert second.returncode == 0, second.stderr[-3000:]
    recs = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]  # the second launch resumed at step 2
    assert [r["step"] for r in recs if "valid_loss" in r] == [2, 3]
    assert (root / "run" / "checkpoints" / "latest").read_text() == "step_00000003"
    assert yaml.safe_load((root / "run" / "config.yaml").read_text())["train"]["train_steps"] == 3
    assert "step 3/3" in second.stderr
    assert "freed host memory is kept for reuse" in first.stderr  # CPU training (host_memory.py)


def test_bad_override_is_one_line_error(config_file):
    _, path = config_file
    out = _run([sys.executable, "-m", "megatron_moe.train", "--config", str(path), "train.lr_schedule=step"])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: train.lr_schedule='step' is not one of")
