"""CPU training keeps freed host memory for reuse (megatron_moe/host_memory.py): a large tensor freed and allocated
again takes no page faults the second time, and an allocator the user chose is left alone."""
import platform

import pytest

from _cli import run_cli

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# Allocates, touches and frees 256 MiB twelve times; prints what keep_freed_host_memory said (when asked) and
# the minor page faults of the last three rounds. glibc before 2.38 cannot reuse a freed block for the next
# aligned request of the same size while small objects sit right after it (posix_memalign asks for a little
# more), so the heap grows for the first ~7 rounds and then levels off (docs/training.md).
PROGRAM = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from megatron_moe.host_memory import keep_freed_host_memory
    print(keep_freed_host_memory())
def step():
    t = torch.empty(64 * 2 ** 20)
    t.fill_(1.0)
    del t
for _ in range(9):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""
PAGES = 64 * 2 ** 20 * 4 // 4096  # of the 256 MiB


def _faults(tmp_path, mode, env=None):
    program = tmp_path / "faults.py"
    program.write_text(PROGRAM)
    out = run_cli(program, mode, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    return lines[0] if mode == "keep" else "", int(out.stdout.split()[-1])


def test_freed_memory_is_reused_without_page_faults(tmp_path):
    said, kept = _faults(tmp_path, "keep")
    assert said.startswith("freed host memory is kept for reuse")
    assert kept < PAGES // 100
    _, system = _faults(tmp_path, "system")  # glibc's default: unmapped on free, every page faulted in again
    assert system >= 3 * PAGES


def test_an_allocator_the_user_chose_is_left_alone(tmp_path):
    import os

    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    said, faults = _faults(tmp_path, "keep", env)
    assert said == "host allocator left as chosen (GLIBC_TUNABLES sets glibc.malloc)"
    assert faults >= 3 * PAGES
    from megatron_moe.host_memory import allocator_chosen_by_user

    assert allocator_chosen_by_user({"MALLOC_ARENA_MAX_": "2"}) == "MALLOC_ARENA_MAX_ is set"
    assert allocator_chosen_by_user({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD loads an allocator"
    assert allocator_chosen_by_user({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "LD_PRELOAD": ""}) == ""
