"""Offline resharding: load a checkpoint into the target TP/EP layout on local gloo ranks and save it from there.

Our storage is layout-independent (canonical global tensors, docs/checkpoint_format.md), so any checkpoint
already loads into any layout at start-up; this tool exists to check a target layout before a job and to write
a checkpoint the way that layout's ranks write it (DCP chunks per rank). Each of lcm(tp, ep*etp) forked CPU ranks
builds its shard of the model, fills it with `checkpoint.load_into` (reading only its slices) and writes it with
`checkpoint.save_model`; the result is renamed into place when complete and, with `verify`, compared tensor by
tensor with the source. Optimizer state and trainer_state.json are not carried (resume loads any layout directly).
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import socket
import tempfile
import traceback
from pathlib import Path

from ..checkpoint.format import CARRIED_FILES

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, src: str, dst: str, tp: int, ep: int, etp: int, err_dir: str) -> None:
    from ..signals import worker_ignores_interrupts

    worker_ignores_interrupts()  # Ctrl-C is the parent's: it stops the ranks and removes the output
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    code = 0
    try:
        import torch

        from ..checkpoint import load_into, read_config, save_model
        from ..config import Config, ParallelConfig
        from ..model import build_model
        from ..parallel import destroy_parallel, init_parallel

        torch.set_num_threads(1)
        model_cfg, moe_cfg, _ = read_config(src)
        cfg = Config(model=model_cfg, moe=moe_cfg, parallel=ParallelConfig(tp=tp, ep=ep, etp=etp, backend="gloo"))
        ps = init_parallel(cfg.parallel)
        model = build_model(cfg, ps, recompute=False)
        load_into(model, src)
        save_model(model, dst)
        destroy_parallel()
    except BaseException:  # noqa: BLE001 - report anything to the parent
        Path(err_dir, f"rank{rank}.err").write_text(traceback.format_exc())
        code = 1
    os._exit(code)


def reshard(load: str | Path, save: str | Path, tp: int = 1, ep: int = 1, etp: int = 1, verify: bool = True,
            timeout_s: float = 3600.0) -> Path:
    """Write checkpoint `load` as saved by a tp x ep (x etp) layout into `save` (must not exist)."""
    from ..atomic import AtomicDir, check_output
    from ..checkpoint import resolve
    from ..checkpoint.verify import verify_checkpoint
    from ..config import ParallelConfig

    src = resolve(load)
    final = check_output(save, inputs=[src])
    model_cfg, moe_cfg, raw = verify_checkpoint(src)
    world = math.lcm(tp, ep * etp)
    ParallelConfig(tp=tp, ep=ep, etp=etp if etp > 1 else None).validate(world, model_cfg, moe_cfg)
    with AtomicDir(final, inputs=[src]) as tmp:
        _run_ranks(world, str(src), str(tmp), tp, ep, etp, timeout_s)
        for name in CARRIED_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        raw = {**raw, "resharded_from": str(src), "saved_layout": {"tp": tp, "ep": ep, "etp": etp}}
        (tmp / "config.json").write_text(json.dumps(raw, indent=1))  # last: marks the checkpoint complete
        if verify:
            compare_checkpoints(src, tmp)
    if (src / "optimizer").is_dir():
        log.warning("optimizer state not carried over; a resumed run loads %s itself in any layout", src)
    return final


def _run_ranks(world: int, src: str, dst: str, tp: int, ep: int, etp: int, timeout_s: float) -> None:
    from ..errors import CheckpointError
    from ..signals import signals_deferred

    ctx = mp.get_context("fork")
    port = _free_port()
    with tempfile.TemporaryDirectory() as err_dir:
        procs = [ctx.Process(target=_rank_main, args=(r, world, port, src, dst, tp, ep, etp, err_dir))
                 for r in range(world)]
        try:
            with signals_deferred():
                for p in procs:
                    p.start()
            for p in procs:
                p.join(timeout_s)
        finally:  # also on Ctrl-C / SIGTERM in the parent: no rank outlives it
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        errs = sorted(Path(err_dir).glob("rank*.err"))
        if errs:
            last = [ln for ln in errs[0].read_text().splitlines() if ln.strip()][-1]
            raise CheckpointError(f"resharding failed on {errs[0].stem}: {last[:300]}")
        if any(p.exitcode != 0 for p in procs):
            raise CheckpointError(f"resharding ranks exited with codes {[p.exitcode for p in procs]}")


def compare_checkpoints(a: str | Path, b: str | Path) -> None:
    """Raise CheckpointError unless both hold the same tensor names with bitwise-equal values."""
    import torch

    from ..checkpoint import read_index, read_tensors
    from ..errors import CheckpointError

    pa, pb = read_index(a)["parts"], read_index(b)["parts"]
    names_a = {n for ns in pa.values() for n in ns}
    names_b = {n for ns in pb.values() for n in ns}
    if names_a != names_b:
        diff = sorted(names_a ^ names_b)
        raise CheckpointError(f"{b}: tensor names differ from {a} ({len(diff)}, e.g. {diff[0]!r})")
    for part, names in pa.items():
        ta, tb = read_tensors(a, names), read_tensors(b, names)
        for n in names:
            if ta[n].shape != tb[n].shape or not torch.equal(ta[n], tb[n]):
                raise CheckpointError(f"{b}: tensor {n!r} differs from {a}")
