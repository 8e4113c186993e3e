"""tests/_cli.py forks command runs from a server that imported torch once; a run must look exactly like a fresh
interpreter's: exit code, stdout, the error lines, a traceback, the working directory, sys.argv and sys.path[0],
`__main__`, atexit handlers."""
import os

import pytest

from _cli import run_cli

REPO_RUNS = [
    ("tools/import_llama.py", "--load", "{tmp}/nope", "--save", "{tmp}/out"),   # a script, exit 2
    ("-m", "megatron_moe.train", "--config", "{tmp}/missing.yaml"),              # -m, exit 2
    ("-m", "megatron_moe.cli", "plan", "--help"),                                # -m of a package, stdout, exit 0
    ("-m", "megatron_moe.cli", "no-such-command"),                               # argparse's own error
]
SCRIPT = """import atexit, os, sys
atexit.register(lambda: print("atexit ran", flush=True))
print(sys.argv[1:], __name__, sys.path[0] == os.path.dirname(os.path.realpath(__file__)), os.environ.get("RUN_VAR"))
open("written_here", "w").close()
sys.exit(3)
"""


def _seen(r):
    lines = r.stderr.splitlines()
    return (r.returncode, r.stdout, [ln for ln in lines if ln.startswith(("error:", "usage:", "ValueError"))],
            "Traceback" in r.stderr)


@pytest.mark.parametrize("i", range(len(REPO_RUNS)))
def test_a_forked_command_equals_a_fresh_interpreters(tmp_path, i):
    argv = [a.format(tmp=tmp_path) for a in REPO_RUNS[i]]
    fresh, forked = run_cli(*argv, fresh=True), run_cli(*argv)
    assert forked.forked and not fresh.forked
    assert _seen(forked) == _seen(fresh)
    assert fresh.returncode in (0, 2)


@pytest.mark.parametrize("body", [SCRIPT, "raise ValueError('boom')\n"], ids=["exit-atexit-cwd", "uncaught"])
def test_a_forked_script_equals_a_fresh_interpreters(tmp_path, body):
    script = tmp_path / "script.py"
    script.write_text(body)
    seen = []
    for fresh in (True, False):
        cwd = tmp_path / ("fresh" if fresh else "forked")
        cwd.mkdir()
        r = run_cli(script, "a", "b", cwd=cwd, fresh=fresh, env={**os.environ, "RUN_VAR": "given"})
        assert r.forked != fresh
        seen.append((*_seen(r), sorted(p.name for p in cwd.iterdir())))
    assert seen[0] == seen[1]
    assert seen[0][0] in (1, 3) and (seen[0][0] == 1) == seen[0][3]
    if body == SCRIPT:
        assert seen[0][1] == "['a', 'b'] __main__ True given\natexit ran\n" and seen[0][4] == ["written_here"]
