"""Run a function on N local gloo ranks (forked processes) and collect each rank's return value.

    results = spawn(fn, world_size, *args)     # fn(rank, world_size, *args) -> tensors/lists/dicts/numbers

fn runs with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set; it calls megatron_moe.parallel.init_parallel itself.
A rank that raises makes spawn raise with that rank's traceback.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
import traceback
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, out_dir, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 0
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:  # noqa: BLE001 - report anything to the parent
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        code = 1
    finally:
        try:
            from megatron_moe.parallel import destroy_parallel

            destroy_parallel()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def spawn(fn, world_size: int, *args, timeout: float = 240.0) -> list:
    ctx = mp.get_context("fork")
    port = free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, out_dir, args)) for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        errors = [(Path(out_dir) / f"rank{r}.err") for r in range(world_size)]
        msgs = [f"--- rank {r} ---\n{e.read_text()}" for r, e in enumerate(errors) if e.exists()]
        if msgs:
            raise RuntimeError("distributed test failed:\n" + "\n".join(msgs))
        if hung:
            raise RuntimeError(f"ranks {hung} did not finish within {timeout} s")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
