"""The memory planner against a measurement: real training steps on CPU over gloo, each category's maximum per
rank from torch's MemTracker, side by side with `plan_memory` for the same config and layout (fp32, no overhead,
gathered_layers=1: gloo runs each all-gather before the compute that needs it).

    rows = check_plan(sharding_modes=("zero1", "zero2", "fsdp"), world=2)   # list of dicts, one per mode and rank

The model has LLaMA-2-7B's widths (hidden 4096, FFN 11008 split into 16 experts of 688, 32 heads), 2 layers,
a shrunk vocabulary and short sequences, so the parameter terms dominate as they do at scale. Categories:
  params       max Parameter (sharded and gathered FSDP2 parameters alike); planned: weights + the fp32 master
               weights that the planner counts under optimizer
  grads        max Gradient, or Gradient + the all-reduce bucket (zero1), or Gradient + Temp (FSDP2), see
               `_measured`; planned: grads (+ all-to-all buffers under FSDP2, also Temp)
  optimizer    Optstate after the last step (AdamW m, v); planned: optimizer minus master weights
  activations  max Activation outside sync_grads and FSDP2's all-gather; planned: `activation_bytes` with the
               rows this rank's experts received in each measured micro-batch (recorded from the dispatch), the
               largest (the planner itself assumes balanced routing)
FSDP2: MemTracker files a module's parameters when its forward starts and everything else made in forward as
Activation. The check files the gathered parameters as Parameter the moment FSDP2 writes them (the experts,
entered through registered methods, start no forward) and FSDP2's flat all-gather buffers as Other (reported as
`fsdp_buffers`, not planned: one unit's worth, freed after the next unit's copy-out). torch's FSDPMemTracker,
which tells FSDP2's buffers apart, does not follow units entered through registered forward methods (our
model.loss, the experts' row methods) and fails in backward, so the plain MemTracker is used.
Measured after a warm-up step, so the AdamW state exists.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import Config, DataConfig, DomainConfig, ModelConfig, MoEConfig, TrainConfig

CATEGORIES = ("params", "grads", "optimizer", "activations")
VOCAB = 1024


def check_config(run_dir: Path, prefixes: dict, sharding: str, ep: int, seq_len: int = 64) -> Config:
    model = ModelConfig(hidden_size=4096, intermediate_size=11008, num_layers=2, num_heads=32, num_kv_heads=32,
                        vocab_size=VOCAB, max_seq_len=seq_len)
    moe = MoEConfig(num_experts=16, top_k=4, expert_ffn_size=688, router="softmax_topk", noisy_gate=False)
    data = DataConfig(domains=[DomainConfig(name=n, prefixes=[p], weight=1.0) for n, p in prefixes.items()],
                      seq_len=seq_len, valid_fraction=0.1, seed=7)
    train = TrainConfig(micro_batch_size=1, global_batch_size=2, train_steps=8, lr=1e-4, warmup_steps=1,
                        precision="fp32", sharding=sharding, eval_interval=0, seed=3)
    cfg = Config(model=model, moe=moe, data=data, train=train)
    cfg.parallel.ep = ep
    cfg.logging.run_dir, cfg.logging.tensorboard = str(run_dir), False
    cfg.checkpoint.save_interval = 0
    return cfg


def write_tokens(root: Path, vocab: int = VOCAB) -> dict:
    """A small random-token corpus of two domains (Megatron indexed datasets)."""
    from .data._mcore import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    prefixes = {}
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        prefix = root / f"{name}_text_document"
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
        for _ in range(40):
            builder.add_item(torch.from_numpy(rng.integers(3, vocab, 200).astype(np.int64)))
            builder.end_document()
        builder.finalize(f"{prefix}.idx")
        prefixes[name] = str(prefix)
    return prefixes


def _max_tracker():
    """A MemTracker that also keeps each category's maximum over the run (its own peak snapshot holds the
    categories at the moment of the peak total, when e.g. activations are already freed)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class MaxTracker(MemTracker):
        def __init__(self):
            super().__init__()
            self.maxima: dict = {}
            self.in_sync = False  # set around training/grads.sync_grads
            self.in_gather = False  # set inside FSDP2's all-gather, until its buffer is filed as Other

        def _update_snap(self, *args, **kwargs):  # every allocation, free and re-categorisation passes here
            super()._update_snap(*args, **kwargs)
            for dev, cats in self._curr_mem_snap.items():
                top = self.maxima.setdefault(dev, {})
                grad, act, temp = (cats.get(_ref(k), 0) for k in ("GRAD", "ACT", "TEMP"))
                for k, v in cats.items():
                    if v > top.get(k, 0):
                        top[k] = v
                top["grads+temp"] = max(top.get("grads+temp", 0), grad + temp)
                if not (self.in_sync or self.in_gather):
                    top["activations"] = max(top.get("activations", 0), act)
                if self.in_sync:  # MemTracker files the flat all-reduce bucket as Activation
                    top["grads+sync"] = max(top.get("grads+sync", 0), grad + act)

    return MaxTracker()


def _ref(name: str):
    from torch.distributed._tools.mem_tracker import _MemRefType

    return getattr(_MemRefType, name)


def _plain(snapshot: dict) -> dict:
    """{device: {category name: bytes}} (MemTracker keys are enums)."""
    return {str(d): {getattr(k, "value", str(k)): int(v) for k, v in cats.items()} for d, cats in snapshot.items()}


def _measured(maxima: dict, fsdp: bool) -> dict:
    """{category: maximum bytes} of the CPU (`_plain` maxima). MemTracker files what is neither a parameter, a
    gradient nor optimizer state by when it is created: the gradient all-reduce's flat bucket (after backward) as
    Activation, so `grads` is the maximum of Gradient + Activation during sync_grads and `activations` leaves that
    phase out; and under FSDP2 the sharded gradients it writes in backward as Temp, so there `grads` is the
    maximum of Gradient + Temp."""
    (top,) = [v for d, v in maxima.items() if torch.device(d).type == "cpu"]
    grads = top["grads+temp"] if fsdp else max(top.get("Gradient", 0), top.get("grads+sync", 0))
    return {"params": top.get("Parameter", 0), "grads": grads,
            "optimizer": top.get("Optstate", 0), "activations": top.get("activations", 0),
            "fsdp_buffers": top.get("Other", 0), "temp": top.get("Temp", 0), "total": top.get("Total", 0)}


def _planned(cfg: Config, world: int, rows: list) -> dict:
    """The plan's figures in the measured categories; activations with the expert rows this rank received in
    each measured micro-batch (`rows`: one list per micro-batch, one count per MoE layer), the largest."""
    from .memory_plan import activation_bytes, layout_from_config, plan_memory

    layout = layout_from_config(cfg, world)
    # gloo on CPU runs each all-gather before the compute that needs it: no prefetched second layer
    plan = plan_memory(cfg, layout, overhead_gib=0.0, gathered_layers=1)
    master = plan.master_weights
    fsdp = cfg.train.sharding in ("zero2", "fsdp")
    acts = max(activation_bytes(cfg, layout, 0, rows=r) for r in rows)
    return {"params": plan.weights + master, "grads": plan.grads + (plan.a2a_buffers if fsdp else 0.0),
            "optimizer": plan.optimizer - master, "activations": acts, "balanced_activations": plan.activations,
            "temp": plan.a2a_buffers, "total": plan.total}


def _record_rows(model, rows: list) -> None:
    """Append, per forward of the model, the rows each MoE layer's dispatch delivers to this rank's experts."""
    layers = model.moe_layers()
    for i, layer in enumerate(layers):
        dispatcher = layer.dispatcher

        def dispatch(*args, _orig=dispatcher.dispatch, _i=i, **kwargs):
            out = _orig(*args, **kwargs)
            if _i == 0:
                rows.append([])
            rows[-1].append(sum(out[2].counts_e))
            return out

        dispatcher.dispatch = dispatch


def _file_all_gather_buffers(tracker, model) -> None:
    """File FSDP2's flat all-gather buffers (one unit's parameters from every rank, freed after the next unit's
    copy-out) under MemTracker's Other, and the gathered parameters under Parameter as soon as the copy-out
    writes them: MemTracker would file both as Activation (it registers a module's parameters when its forward
    starts; the experts, entered through registered methods, never start one, and their gathered copy over a
    group of one is made by a copy_)."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group

    gather = group.foreach_all_gather

    def filed(*args, **kwargs):
        tracker.in_gather = True  # the buffer is allocated in there, as Activation
        try:
            result = gather(*args, **kwargs)
            if result is not None:
                tracker._update_and_maybe_create_winfos(result.all_gather_output, _ref("OTH"))
        finally:
            tracker.in_gather = False
        return result

    group.foreach_all_gather = filed
    wait = group.FSDPParamGroup.wait_for_unshard

    def gathered(self, *args, **kwargs):  # the gathered parameters are parameters from the moment they exist
        out = wait(self, *args, **kwargs)
        for fsdp_param in self.fsdp_params:
            for t in fsdp_param.all_gather_outputs:
                tracker._update_and_maybe_create_winfos(t, _ref("PARAM"))
        return out

    group.FSDPParamGroup.wait_for_unshard = gathered
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # the copy-out writes into buffers made in the warm-up step: file them now
        param_group = module._get_fsdp_state()._fsdp_param_group if isinstance(module, FSDPModule) else None
        for fsdp_param in param_group.fsdp_params if param_group else ():
            for t in fsdp_param.all_gather_outputs:
                tracker._update_and_maybe_create_winfos(t, _ref("PARAM"))


def _rank(rank: int, world: int, root: str, prefixes: dict, sharding: str, ep: int, steps: int, port: int,
          out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from .parallel import destroy_parallel, init_parallel
    from .training import build_trainer, preflight

    cfg = check_config(Path(root) / f"{sharding}_ep{ep}", prefixes, sharding, ep)
    preflight(cfg, world)
    trainer = build_trainer(cfg, init_parallel(cfg.parallel))
    trainer.train_step()  # warm-up: AdamW state exists from here on
    opts = [o.optim if hasattr(o, "optim") else o for o, _ in trainer.optimizer.parts]
    tracker = _max_tracker()
    tracker.track_external(trainer.model, *opts)
    from .training import trainer as trainer_module

    sync = trainer_module.sync_grads

    def tagged_sync(*args, **kwargs):  # the gradient all-reduce's flat bucket is gradient memory, not activation
        tracker.in_sync = True
        try:
            return sync(*args, **kwargs)
        finally:
            tracker.in_sync = False

    trainer_module.sync_grads = tagged_sync
    rows: list = []
    _record_rows(trainer.model, rows)
    _file_all_gather_buffers(tracker, trainer.model)
    with tracker:
        for _ in range(steps):
            tracker.reset_mod_stats()  # per-module stats are per iteration; the peak snapshot is kept
            trainer.train_step()
    maxima = _plain(tracker.maxima)
    measured = _measured(maxima, trainer.sharded)
    # AdamW state after the step (the planner's figure); the maximum adds the CPU AdamW's step temporaries
    measured["optimizer_step_max"] = measured["optimizer"]
    (now,) = [v for d, v in _plain(tracker.get_tracker_snapshot()).items() if torch.device(d).type == "cpu"]
    measured["optimizer"] = now.get("Optstate", 0)
    row = {"sharding": sharding, "ep": ep, "rank": rank, "measured": measured,
           "planned": _planned(cfg, world, rows), "rows": rows,
           "raw": maxima}
    trainer.close()
    destroy_parallel()
    (Path(out) / f"{sharding}_ep{ep}_rank{rank}.json").write_text(json.dumps(row))


def check_plan(sharding_modes=("zero1", "zero2", "fsdp"), world: int = 2, ep: int = 2, steps: int = 2) -> list[dict]:
    """Run each mode on `world` local gloo processes; one row per mode and rank (module docstring)."""
    import multiprocessing as mp
    import socket

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prefixes = write_tokens(Path(tmp) / "data")
        for mode in sharding_modes:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=_rank, args=(r, world, tmp, prefixes, mode, ep, steps, port, tmp))
                     for r in range(world)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            if any(p.exitcode for p in procs):
                raise RuntimeError(f"memory check of {mode}: ranks exited with {[p.exitcode for p in procs]}")
            rows += [json.loads((Path(tmp) / f"{mode}_ep{ep}_rank{r}.json").read_text()) for r in range(world)]
    return rows


def format_rows(rows: list[dict]) -> str:
    """Markdown: measured vs planned MiB per category, and the ratio."""
    lines = ["| mode | rank | " + " | ".join(f"{c} MiB measured / planned (ratio)" for c in CATEGORIES) + " |",
             "| --- | --- | " + " | ".join("---" for _ in CATEGORIES) + " |"]
    for r in rows:
        cells = []
        for c in CATEGORIES:
            m, p = r["measured"][c] / 2 ** 20, r["planned"][c] / 2 ** 20
            cells.append(f"{m:.0f} / {p:.0f} ({m / p:.2f})" if p else f"{m:.0f} / 0")
        lines.append(f"| {r['sharding']} ep={r['ep']} | {r['rank']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["CATEGORIES", "check_config", "check_plan", "format_rows"]
