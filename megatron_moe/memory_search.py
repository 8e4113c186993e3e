"""The search for a layout that fits (`megatron-moe plan`, tools/plan_table.py); estimates: memory_plan.py.

    best = suggest_layout(cfg, world_size=64, gpu_mem_gib=80.0)   # a MemoryPlan or None

Searched: tp and ep*etp within a node (NVLink), etp in {1, configured}, sp whenever tp > 1, pipeline stages pp a
power of 2 (1, 2, 4, ...) up to the layer count that divides the world, each with the even split of the layers
(when pp divides them) and with the memory-balanced split (`balanced_layers`), and each also with flushes of
4·pp micro-batches (`parallel.pp_flush`, when that is fewer than a step's and divides them: it bounds torch's
per-micro-batch receive buffers at the cost of a pipeline bubble per flush), the sharding modes of
SEARCHED_SHARDING, recomputation off / on, micro batch a power of 2 up to 8.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Optional

from .config import Config
from .memory_layout import Layout, MemoryPlanError, check_layout
from .memory_plan import MemoryPlan, plan_memory, stage_plan

# (sharding, offload) in order of preference: zero1 is as cheap as none (the same all-reduce volume); zero2 gathers
# weights once per micro-batch; fsdp again in backward; offload moves AdamW to the CPU
SEARCHED_SHARDING = (("zero1", False), ("none", False), ("zero2", False), ("fsdp", False), ("zero2", True),
                     ("fsdp", True))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def balanced_layers(cfg: Config, layout: Layout, **plan_opts) -> tuple:
    """Decoder layers per stage that even out the stages' memory: stage 0 holds pp micro-batches in flight, the
    last stage the LM head and the logits, so both usually get fewer layers. Each stage's total is taken as affine in
    its layer count (measured at one and two layers: the layers' weights, optimizer state and in-flight activations
    per layer, plus what the stage holds besides), and the layers go one at a time to the stage whose total grows
    least (the minimal maximum for such costs). plan_memory then plans the result exactly."""
    L, p = cfg.model.num_layers, layout.pp
    cost = []
    for s in range(p):
        at = [stage_plan(cfg, dataclasses.replace(layout, pp_layout=tuple(n if i == s else 1 for i in range(p))), s,
                         **plan_opts).total for n in (1, 2)]
        cost.append((at[0] - (at[1] - at[0]), at[1] - at[0]))  # (the stage without layers, per layer)
    counts = [1] * p
    for _ in range(L - p):
        s = min(range(p), key=lambda i: cost[i][0] + (counts[i] + 1) * cost[i][1])
        counts[s] += 1
    return tuple(counts)


def candidate_layouts(cfg: Config, world_size: int, gpus_per_node: int = 8, max_micro_batch: int = 8) -> list[Layout]:
    """Layouts that validate (module docstring); a pipeline layout comes with the even split (pp_layout None) when
    pp divides the layers and with balanced_layers' split when that differs."""
    E, L = cfg.moe.num_experts, cfg.model.num_layers
    eps = [d for d in _divisors(E) if d <= gpus_per_node] if cfg.moe.enabled else [1]
    etps = sorted({1, cfg.parallel.expert_tp})
    mbs = [2 ** i for i in range(max_micro_batch.bit_length()) if 2 ** i <= max_micro_batch]
    pps = [2 ** i for i in range(world_size.bit_length()) if world_size % 2 ** i == 0 and 2 ** i <= L]
    if cfg.model.tie_embeddings:
        pps = [1]  # the embedding and the head would live on different stages (refused by the config)
    out = []
    for tp, pp, ep, etp, (sharding, offload), recompute, mb in itertools.product(
            [d for d in _divisors(world_size) if d <= gpus_per_node], pps, eps, etps, SEARCHED_SHARDING,
            (False, True), mbs):
        if ep * etp > gpus_per_node:
            continue
        base, extra = divmod(L, pp)  # a valid split, to check everything else
        layout = Layout(world_size, tp, ep, etp, tp > 1, sharding, offload, recompute, mb, pp,
                        tuple(base + (i < extra) for i in range(pp)) if extra else None)
        try:
            check_layout(cfg, layout)
        except MemoryPlanError:
            continue
        if pp == 1:
            out.append(layout)
            continue
        splits = [None] if not extra else []
        balanced = balanced_layers(cfg, layout)
        if len(set(balanced)) > 1:
            splits.append(balanced)
        flushes = [0]
        n_micro = cfg.train.global_batch_size // (mb * layout.dp)
        if 4 * pp < n_micro and n_micro % (4 * pp) == 0:
            flushes.append(4 * pp)
        out.extend(dataclasses.replace(layout, pp_layout=split, pp_flush=f) for split in splits for f in flushes)
    return out


def gathers_across_nodes(layout: Layout, gpus_per_node: int) -> bool:
    """zero2 / fsdp all-gather the weights every micro-batch over the data-parallel groups; they leave the node when
    a pipeline stage (world / pp GPUs, rank order tp-cp-ep-dp-pp) spans several nodes."""
    return layout.sharding in ("zero2", "fsdp") and layout.world_size // layout.pp > gpus_per_node


def suggest_layout(cfg: Config, world_size: int, gpu_mem_gib: float, *, gpus_per_node: int = 8,
                   overhead_gib: float = 4.0, a2a_imbalance: float = 2.0, margin: float = 0.9) -> Optional[MemoryPlan]:
    """The preferred layout whose estimate stays within margin * gpu_mem_gib, or None. Preference: no optimizer
    offload (AdamW on the CPU is slow), then the smallest tp (TP communicates every layer), then no weight
    gathering across nodes (zero2 / fsdp re-gather the weights every micro-batch: across nodes that costs more than
    pipeline bubbles), then the fewest pipeline stages, then one flush per step (no extra pipeline bubbles), then
    no recomputation (~1/3 more compute), then the
    largest micro batch up to 4, then the least sharding (SEARCHED_SHARDING's order), then the smallest ep, then
    the smallest total."""
    opts = dict(overhead_gib=overhead_gib, a2a_imbalance=a2a_imbalance)
    fitting = []
    for layout in candidate_layouts(cfg, world_size, gpus_per_node):
        plan = plan_memory(cfg, layout, checked=True, **opts)  # candidate_layouts validated it
        if plan.fits(gpu_mem_gib * margin):
            fitting.append(plan)
    if not fitting:
        return None

    def key(plan: MemoryPlan):
        lay = plan.layout
        return (lay.offload, lay.tp, gathers_across_nodes(lay, gpus_per_node), lay.pp, lay.pp_flush > 0,
                lay.recompute, -min(lay.micro_batch, 4), SEARCHED_SHARDING.index((lay.sharding, lay.offload)), lay.ep,
                lay.micro_batch, plan.total)

    return min(fitting, key=key)
