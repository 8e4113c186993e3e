"""The two images share their install steps, and the GPU image installs the GPU lock minus what NGC provides.

Building and running the CPU image is `make docker-test` (docker/test_image.sh; needs podman or Docker, so it is
not part of this suite). These tests check what that build cannot: that the GPU Dockerfile runs the same steps,
and what docker/lock_for_base.py keeps and installs on a base like NGC's (its torch, triton and pinned packages).
"""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU, CPU = ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"
SCRIPT = ROOT / "docker" / "lock_for_base.py"
_spec = importlib.util.spec_from_file_location("lock_for_base", SCRIPT)
lfb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lfb)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in text.splitlines() if ln.strip()]


def _install_steps(path: Path) -> list[list[str]]:
    return [m.split() for kind, args in _instructions(path) if kind == "RUN"
            for m in re.findall(r"docker/install\.sh\s+([^&;|]+)", args)]


def test_both_images_run_the_same_install_steps():
    cpu, gpu = _install_steps(CPU), _install_steps(GPU)
    assert [s[0] for s in cpu] == [s[0] for s in gpu] == ["os", "deps", "project", "check", "user"]
    assert cpu[1][1:] == ["requirements/cpu.lock"] and gpu[1][1:] == ["requirements/gpu.lock"]
    assert cpu[0][1:] == ["python3.11"]  # the CPU base may be a bare Debian: the locks' Python from apt
    for path in (CPU, GPU):
        steps = _instructions(path)
        runs = " ".join(args for kind, args in steps if kind == "RUN")
        assert "pip install" not in runs, f"{path.name}: installs outside docker/install.sh"
        entry = [args for kind, args in steps if kind == "ENTRYPOINT"]
        assert len(entry) == 1 and entry[0].startswith('["/usr/bin/tini", "--"'), entry  # PID 1 forwards SIGTERM
        assert ("USER", "1000:1000") in steps
        volumes = next(args for kind, args in steps if kind == "VOLUME")
        assert all(f"/workspace/megatron_moe/{d}" in volumes for d in ("data", "checkpoints", "runs"))
        assert any(kind == "ARG" and args.startswith("PIP_FIND_LINKS") for kind, args in steps)


def test_lock_python_is_the_makefiles():
    assert f"--python-version {lfb.LOCK_PYTHON[0]}.{lfb.LOCK_PYTHON[1]}" in (ROOT / "Makefile").read_text()


def _lock(name):
    return lfb.parse_lock((ROOT / "requirements" / name).read_text())


def _direct_requirements() -> set[str]:
    """setup.py's install_requires and [gpu] extra, read from its text."""
    text = (ROOT / "setup.py").read_text()
    block = text[text.index("INSTALL_REQUIRES"):text.index("EXTRAS")] + text[text.index('"gpu"'):].split("]", 1)[0]
    return {lfb.canonical(m) for m in re.findall(r'"([A-Za-z0-9_.-]+)[<>=!;\s\[]', block)}


def test_gpu_lock_on_an_ngc_like_base():
    """NGC has its own torch (a pre-release build), triton and numpy, pins numpy in its constraint file, and an
    old pip. Installed: everything else we need, at the locked versions. Kept: NGC's. Not installed: the CUDA
    wheels only PyPI's torch needs, i.e. what gpu.lock has beyond cpu.lock (uv resolved both independently)."""
    gpu, parents, direct = _lock("gpu.lock")
    cpu, _, _ = _lock("cpu.lock")
    installed = {"torch": "2.8.0a0+5228986c39.nv25.8", "triton": "3.3.1+gitc8757738", "numpy": "1.26.4",
                 "pip": "24.0", "some-ngc-tool": "1.0"}
    install, kept, dropped = lfb.split(gpu, parents, direct, installed, base_pins={"numpy": "1.26.4"})
    assert kept == {"torch": installed["torch"], "triton": installed["triton"], "numpy": "1.26.4"}
    cuda_wheels = set(gpu) - set(cpu)
    assert cuda_wheels and all(n.startswith(("nvidia-", "cuda-")) for n in cuda_wheels)
    assert cuda_wheels <= dropped and not (cuda_wheels & set(install))
    assert install["pip"] == gpu["pip"]  # installer tools as locked, unless the base pins them
    needed = _direct_requirements() - set(kept)
    assert needed and all(install.get(n) == gpu[n] for n in needed), needed - set(install)
    assert set(install) | set(kept) | dropped == set(gpu)


def test_fresh_environment_installs_the_whole_lock():
    gpu, parents, direct = _lock("cpu.lock")
    install, kept, dropped = lfb.split(gpu, parents, direct, {"pip": "23.0.1", "setuptools": "66.1.1"}, {})
    assert install == gpu and not kept and not dropped


def test_base_constraint_pins_are_kept():
    gpu, parents, direct = _lock("gpu.lock")
    _, kept, _ = lfb.split(gpu, parents, direct, {}, base_pins={"pip": "25.0", "transformers": "4.57.0"})
    assert kept == {"pip": "25.0", "transformers": "4.57.0"}


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def _installed(md, name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def test_cli_split_and_verify_against_this_environment(tmp_path):
    """Split the CPU lock in this venv (built from that lock by `make venv`): nothing to install but the
    installer tools; verify agrees with what importlib.metadata reports, and catches a wrong version."""
    import importlib.metadata as md

    locked = dict(ln.split("==", 1) for ln in (ROOT / "requirements" / "cpu.lock").read_text().splitlines()
                  if "==" in ln and not ln.startswith(("#", " ")))
    differ = sorted(n for n, v in locked.items() if _installed(md, n) not in (v, None))
    if differ:  # `make test-latest` runs the suite in a venv built from the ranges, not from this lock
        pytest.skip(f"this venv is not the CPU lock's ({', '.join(differ[:3])} differ): the test's premise")
    r = _run("split", ROOT / "requirements" / "cpu.lock", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    keep = (tmp_path / "keep-base.txt").read_text()
    assert f"\ntorch=={locked['torch']}\n" in keep
    install = [ln for ln in (tmp_path / "install.txt").read_text().splitlines() if not ln.startswith("#")]
    assert {ln.split("==")[0] for ln in install} <= lfb.INSTALLER_TOOLS
    r = _run("verify", "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "install.txt").write_text("pytest==0.0.1\n")
    r = _run("verify", "--out-dir", tmp_path)
    assert r.returncode == 1 and "error: pytest: locked 0.0.1, installed" in r.stderr


@pytest.mark.parametrize("text", ["torch>=2.4\n", "# only a comment\n"], ids=["unpinned", "empty"])
def test_cli_bad_lock(tmp_path, text):
    (tmp_path / "bad.lock").write_text(text)
    r = _run("split", tmp_path / "bad.lock", "--out-dir", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
