"""Process start-up: the command's module, its arguments and the modules its main names in IMPORTS are loaded with
the cyclic garbage collector off, then frozen out of it; the collector is back on when the work starts."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import gc, json, sys
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None)
import megatron_moe.cli.convert as command
seen = {}
def main(args):
    seen.update(full_collections=len(full) - before, enabled=gc.isenabled(), frozen=gc.get_freeze_count(),
                imported="megatron_moe.construct.convert" in sys.modules, load=args.load)
    return 0
command.main = main
from megatron_moe.cli import run_command
before = len(full)
code = run_command("convert", ["--load", "dense", "--save", "moe"], process=PROCESS)
print(json.dumps([code, seen]))
"""


def _probe(process: bool) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("PROCESS", str(process))], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_start_up_runs_without_full_collections_and_freezes_what_it_imported():
    code, seen = _probe(True)
    assert code == 0 and seen["load"] == "dense"
    assert seen["imported"], "convert's IMPORTS were not imported before its main"
    assert seen["full_collections"] == 0, seen  # torch's and DCP's imports made 5 of them before (0.4 s)
    assert seen["enabled"], "the collector must be on while the command works"
    assert seen["frozen"] > 100_000, seen  # torch's and DCP's module objects are out of the collector's way


def test_a_library_call_leaves_the_collector_alone():
    code, seen = _probe(False)
    assert code == 0 and seen["enabled"] and seen["frozen"] == 0
