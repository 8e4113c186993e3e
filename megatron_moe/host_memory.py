"""Keep freed host memory in the process, so a tensor freed every step is reused instead of faulted in again.

glibc's malloc serves every block over 32 MiB with its own mmap and unmaps it on free. A CPU training step frees
and re-allocates the same large tensors every step (weight gradients after `zero_grad(set_to_none=True)`,
activations), so each step the kernel maps and zeroes them again, one 4 KiB page fault at a time: at Mixtral's
expert width that was 5.6 GB and 1.4 million faults per MoE layer step, more time in the kernel than in the
matmuls (docs/benchmarks.md). `keep_freed_host_memory()` asks glibc (`mallopt`) to serve large blocks from the
heap (M_MMAP_MAX = 0) and never to give the heap's free top back (M_TRIM_THRESHOLD = -1): freed blocks are then
reused by the next step. The cost: the process's memory stays at its high-water mark until it exits, plus
fragmentation. glibc before 2.38 (Debian 12 has 2.36) cannot hand a freed block to the next aligned request of
the same size while a small object sits right after it (torch's posix_memalign asks for a little more), so the
heap grows until freed blocks coalesce: +7-11% peak RSS in CPU training (docs/benchmarks.md), and 8x for one
256 MiB tensor re-allocated alone in a loop, levelling off after ~7 rounds (tests/foundation/test_host_memory.py).

Used by CPU training (train.keep_host_memory) and by `convert`, whose per-layer expert weights likewise reuse the
previous layer's memory (1.13-1.27x faster at 16-32 layers, peak RSS 1.5 -> 1.8-1.9 GiB, still flat in the
layers; docs/benchmarks.md).

Nothing is changed where the user chose the allocator: GLIBC_TUNABLES naming glibc.malloc, a MALLOC_*_ variable
(glibc's older spelling), or an LD_PRELOAD'ed allocator (jemalloc, tcmalloc, mimalloc). Not glibc (musl, macOS):
nothing to do.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4


def allocator_chosen_by_user(environ=None) -> str:
    """Why the user's own allocator settings win ('' when they set none)."""
    env = os.environ if environ is None else environ
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    named = sorted(k for k in env if k.startswith("MALLOC_") and k.endswith("_"))
    if named:
        return f"{named[0]} is set"
    preload = env.get("LD_PRELOAD", "")
    if any(name in preload for name in ("malloc", "jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD loads an allocator"
    return ""


def keep_freed_host_memory() -> str:
    """Make this process keep freed memory for reuse (glibc); returns what was done, for the log."""
    chosen = allocator_chosen_by_user()
    if chosen:
        return f"host allocator left as chosen ({chosen})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "host allocator left as is (not glibc)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, -1)):
        return "host allocator left as is (mallopt refused)"
    return "freed host memory is kept for reuse (glibc malloc: no mmap for large blocks, no trimming)"
