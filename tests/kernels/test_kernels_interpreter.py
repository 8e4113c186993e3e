"""Runs interp_cases.py (Triton kernels in the CPU interpreter vs the twins) in a child pytest.

Why a child process: triton.jit decides at decoration (import) time whether a kernel is interpreted, and
moe_kernels reads TRITON_INTERPRET once at import. Setting it in this process would either come too late
(moe_kernels already imported by another test directory) or leak into other directories, whose CPU tests
must keep running on the fast torch twins. The child gets TRITON_INTERPRET=1 before anything is imported.
"""
import os
import subprocess
import sys
from pathlib import Path

from _deps import require

HERE = Path(__file__).resolve().parent
require("triton")


def test_triton_kernels_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(HERE / "interp_cases.py")]
    proc = subprocess.run(cmd, cwd=HERE.parent.parent, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"interpreter tests failed (rc={proc.returncode}):\n{tail}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.split("\n")[-2], tail
