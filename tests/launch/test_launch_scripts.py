"""The launch scripts build the right command lines (python, srun and scontrol replaced by recording stubs)."""
import os
import subprocess
from pathlib import Path

import pytest

from megatron_moe.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _stub(path: Path, log: Path, body: str = "") -> Path:
    """An executable that appends its argv (one line, NUL-free, space-joined) to `log`."""
    path.write_text(f'#!/usr/bin/env bash\n{body}\nprintf "%s\\n" "$(basename "$0") $*" >> "{log}"\n')
    path.chmod(0o755)
    return path


def _run(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NPROC", "RUN_DIR", "OVERRIDES"))}
    return subprocess.run(["bash", str(EXAMPLES / script), *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_convert_script_makes_the_three_checkpoints(tmp_path):
    log = tmp_path / "calls.log"
    python = _stub(tmp_path / "python", log)
    dense = tmp_path / "llama2-7b"
    dense.mkdir()
    proc = _run("convert_llama2_7b.sh", {"PYTHON": str(python), "DENSE_DIR": str(dense), "OUT_ROOT": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 3
    for call, (name, experts, top_k) in zip(calls, [("llama_moe_3.0b_2of16", 16, 2), ("llama_moe_3.5b_4of16", 16, 4),
                                                    ("llama_moe_3.5b_2of8", 8, 2)], strict=True):
        assert call.startswith("python tools/convert_llama_to_moe.py ")
        assert f"--load {dense} --save {tmp_path / 'out' / name} " in call
        assert f"--num-experts {experts} --top-k {top_k} --method random" in call
        assert "--gate-network mlp --seed 1227 --dtype bf16" in call
        # the preset config loads the checkpoint this run writes
        assert load_config(ROOT / "examples" / "configs" / f"{name}.yaml").checkpoint.load == f"checkpoints/{name}"


def test_convert_script_rejects_missing_dense_dir(tmp_path):
    proc = _run("convert_llama2_7b.sh", {"DENSE_DIR": str(tmp_path / "nope")})
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
    proc = _run("convert_llama2_7b.sh", {})
    assert proc.returncode != 0 and "DENSE_DIR" in proc.stderr


def test_torchrun_script_passes_config_run_dir_and_overrides(tmp_path):
    log = tmp_path / "calls.log"
    python = _stub(tmp_path / "python", log)
    env = {"PYTHON": str(python), "NPROC": "4", "CONFIG": "examples/configs/llama_moe_3.5b_2of8.yaml",
           "RUN_DIR": "/shared/runs/x", "OVERRIDES": "train.recompute=true train.micro_batch_size=1"}
    proc = _run("pretrain_torchrun.sh", env, "train.train_steps=10")
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [
        "python -m megatron_moe.cli launch --standalone --nnodes 1 --nproc-per-node 4 --max-restarts 0 "
        "-m megatron_moe.train --config examples/configs/llama_moe_3.5b_2of8.yaml logging.run_dir=/shared/runs/x "
        "train.recompute=true train.micro_batch_size=1 train.train_steps=10"]


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_slurm_script_builds_rendezvous(tmp_path, launcher):
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "srun", log)
    python = _stub(bin_dir / "python", log)
    _stub(bin_dir / "scontrol", tmp_path / "scontrol.log", body='printf "gpu-003\\ngpu-004\\n"')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python), "LAUNCHER": launcher,
           "SLURM_JOB_NODELIST": "gpu-[003-004]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "moe", "SLURM_CPUS_ON_NODE": "64",
           "SLURM_SUBMIT_DIR": str(ROOT), "RUN_DIR": str(tmp_path / "run")}
    proc = _run("pretrain_slurm.sbatch", env, "train.train_steps=5")
    assert proc.returncode == 0, proc.stderr
    check, call = log.read_text().splitlines()  # the preflight on the batch host, then the job step
    args = f"--config examples/configs/llama_moe_3.0b_2of16.yaml logging.run_dir={tmp_path / 'run'} train.train_steps=5"
    assert check == f"python -m megatron_moe.train --check --world-size 16 {args}"
    if launcher == "torchrun":
        assert call == ("srun --kill-on-bad-exit=1 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=64 "
                        f"{python} -m megatron_moe.cli launch --max-restarts 0 --nnodes 2 --nproc-per-node 8 "
                        f"--rdzv-id 77 --rdzv-backend c10d --rdzv-endpoint gpu-003:29500 -m megatron_moe.train {args}")
    else:
        assert call == ("srun --kill-on-bad-exit=1 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=8 "
                        f"{python} -m megatron_moe.train {args}")
    assert (tmp_path / "run").is_dir()


def test_slurm_script_outside_slurm_fails_clearly():
    proc = _run("pretrain_slurm.sbatch", {"SLURM_SUBMIT_DIR": str(ROOT)})
    assert proc.returncode != 0 and "sbatch" in proc.stderr


def test_slurm_script_stops_when_the_preflight_fails(tmp_path):
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "srun", log)
    python = _stub(bin_dir / "python", tmp_path / "python.log", body='echo "error: bad config" >&2; exit 2')
    _stub(bin_dir / "scontrol", tmp_path / "scontrol.log", body='printf "gpu-003\\n"')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python), "SLURM_JOB_NODELIST": "gpu-003",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_SUBMIT_DIR": str(ROOT), "RUN_DIR": str(tmp_path / "run")}
    proc = _run("pretrain_slurm.sbatch", env)
    assert proc.returncode == 2 and "error: bad config" in proc.stderr
    assert not log.exists() and not (tmp_path / "run").exists()  # no job step, no run directory
