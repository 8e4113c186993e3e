"""Run a command as a user types it, `python tools/x.py ...` or `python -m pkg ...`, from the repository root.

    r = run_cli("tools/import_llama.py", "--load", src, "--save", out)   # subprocess.CompletedProcess

Most CLI tests check how a command fails: its exit code, its one error line, nothing left behind. A fresh
interpreter spends ~3 s of CPU importing torch, transformers and megatron-core before the command starts, and the
suite runs a few hundred such commands. So `run_cli` forks each run from a server process (tests/_cli_server.py)
that imported those modules once and started nothing else: every run is still its own process, with its own
exit code, output, working directory, `__main__`, atexit handlers and clean-up, starting from the state a fresh
interpreter reaches after the same imports, in the environment the caller gives (os.environ by default). A run
given an environment that changes a variable read at import time (HF_*, TORCH_*, ...), or `fresh=True`, gets a
new interpreter instead; when os.environ itself changed such a variable, the server is restarted.
tests/foundation/test_cli_runner.py checks that both ways give the same results. Up to two servers serve runs
from different threads at once (the bad-input table runs two at a time).
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_SERVERS = 2


# variables that modules read when imported: a run whose value differs from the server's needs a fresh interpreter
IMPORT_TIME = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "TORCH_", "PYTORCH", "OMP_", "MKL_", "CUDA", "PYTHON",
               "MEGATRON", "MOE_", "TRITON")


def _environment(env: dict | None = None) -> dict:
    """The environment of a run (pytest's note of the current test left out: it changes with every test)."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTEST_CURRENT_TEST"}


def _imports_differ(a: dict, b: dict) -> bool:
    return any(k.startswith(IMPORT_TIME) and a.get(k) != b.get(k) for k in set(a) | set(b))


class _Server:
    def __init__(self):
        self.env = _environment()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_cli_server.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        if json.loads(self.proc.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError("the CLI test server did not start (see the output above)")

    def run(self, argv: list[str], cwd: str, timeout: float, env: dict) -> tuple[int, str, str]:
        with tempfile.TemporaryDirectory() as d:
            out, err = Path(d, "stdout"), Path(d, "stderr")
            out.touch()
            err.touch()
            self.proc.stdin.write(json.dumps({"argv": argv, "cwd": cwd, "stdout": str(out), "stderr": str(err),
                                              "timeout": timeout if timeout is not None else 1e9,
                                              "env": env}) + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline()
            if not reply:
                raise RuntimeError("the CLI test server exited")
            code = json.loads(reply)["returncode"]
            return code, out.read_text(errors="replace"), err.read_text(errors="replace")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


_idle: "queue.LifoQueue[_Server]" = queue.LifoQueue()
_started: list[_Server] = []
_lock = threading.Lock()


def _acquire() -> _Server:
    try:
        return _idle.get_nowait()
    except queue.Empty:
        pass
    with _lock:
        if len(_started) < MAX_SERVERS:
            server = _Server()
            _started.append(server)
            return server
    return _idle.get()


def _restart(server: _Server) -> _Server:
    """A server started in today's os.environ in place of `server`."""
    try:
        server.close()
    except Exception:
        server.proc.kill()
    with _lock:
        _started.remove(server)
        new = _Server()
        _started.append(new)
    return new


@atexit.register
def _close_all():
    for server in _started:
        try:
            server.close()
        except Exception:
            server.proc.kill()


def run_cli(*args, cwd=ROOT, timeout: float = 300, env: dict | None = None,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """`python *args` in `cwd` with `env` (default: os.environ, as subprocess does) -> CompletedProcess(returncode,
    stdout, stderr) (text; `.forked` says how it ran); raises subprocess.TimeoutExpired after `timeout` s. A fresh
    interpreter runs it when asked, or when a variable that modules read at import (IMPORT_TIME) differs from the
    server's (or restarts the server when os.environ itself changed one)."""
    argv = [str(a) for a in args]
    run_env = _environment(env)
    server = None if fresh else _acquire()
    if server is not None and _imports_differ(server.env, run_env):
        if env is None:  # os.environ itself changed: later runs will want the new one too
            server = _restart(server)
        else:
            _idle.put(server)
            server = None
    if server is None:
        result = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                                timeout=timeout, env=env)
        result.forked = False
        return result
    try:
        code, out, err = server.run(argv, str(cwd), timeout, run_env)
    finally:
        _idle.put(server)
    if code == -9 and timeout is not None:
        raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, out, err)
    result = subprocess.CompletedProcess([sys.executable, *argv], code, out, err)
    result.forked = True
    return result
