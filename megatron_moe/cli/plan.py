"""Estimate per-GPU memory of a training config and suggest a layout that fits.

    megatron-moe plan --config examples/configs/llama_moe_3.5b_4of16.yaml --gpus 16 --gpu-mem 80
    megatron-moe plan --config CONFIG.yaml --gpus 8 --gpu-mem 40 parallel.ep=8 train.recompute=true

Exit status: 0 when the configured layout fits, 1 when it does not fit or is not a valid layout for --gpus (e.g.
parallel.ep=8 on 4 GPUs); then the layouts for --gpus are searched (tp, pipeline stages pp with the even and the
memory-balanced layer split, ep, sharding mode, optimizer offload, recomputation, micro batch) and the preferred
one that fits with 10% margin is printed with its overrides, if one exists. With pp > 1 every stage is planned and
the largest is shown. 2 on bad input (unreadable config, bad numbers). Formulas: megatron_moe/memory_plan.py,
docs/launch.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .common import add_json, write_json

if TYPE_CHECKING:
    from ..config import Config
    from ..memory_plan import MemoryPlan


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="training YAML config")
    p.add_argument("--gpus", type=int, required=True, help="world size (total GPUs)")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory per GPU in GiB")
    p.add_argument("--gpus-per-node", type=int, default=8,
                   help="bounds tp and ep*etp in the search; zero2/fsdp over groups wider than a node rank after "
                        "pipeline stages (pp)")
    p.add_argument("--overhead-gib", type=float, default=4.0, help="CUDA context, NCCL, fragmentation")
    p.add_argument("--a2a-imbalance", type=float, default=2.0, help="all-to-all receive headroom factor")
    add_json(p)
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")


def main(args) -> int:
    from ..config import load_config
    from ..memory_plan import MemoryPlanError, layout_from_config, plan_memory, suggest_layout

    if args.gpus < 1 or args.gpu_mem <= 0 or args.gpus_per_node < 1:
        raise MemoryPlanError(f"--gpus={args.gpus}, --gpu-mem={args.gpu_mem} and --gpus-per-node="
                              f"{args.gpus_per_node} must be positive")
    cfg = load_config(args.config, args.overrides)
    opts = dict(overhead_gib=args.overhead_gib, a2a_imbalance=args.a2a_imbalance)
    try:
        plan, invalid = plan_memory(cfg, layout_from_config(cfg, args.gpus), **opts), None
    except MemoryPlanError as err:  # the configured layout does not divide --gpus: search instead of stopping
        plan, invalid = None, str(err)
    fits = plan is not None and plan.fits(args.gpu_mem)
    best = suggest_layout(cfg, args.gpus, args.gpu_mem, gpus_per_node=args.gpus_per_node, **opts)
    if args.json:
        write_json({"configured": plan_fields(plan) if plan else None, "configured_invalid": invalid, "fits": fits,
                    "suggested": plan_fields(best) if best else None}, args.json)
        return 0 if fits else 1
    if plan is not None:
        print(format_plan(cfg, plan, args.gpu_mem))
    else:
        print(f"configured {invalid} on {args.gpus} GPUs; searching layouts for {args.gpus} GPUs")
    if fits:
        return 0
    if best is None:
        print(f"no layout within {args.gpus_per_node} GPUs per node fits in {args.gpu_mem:g} GiB")
    else:
        print("\nsuggested:")
        print(format_plan(cfg, best, args.gpu_mem))
        print(f"overrides: {best.layout.overrides()}")
    return 1


def format_plan(cfg: Config, plan: MemoryPlan, gpu_mem_gib: float) -> str:
    """A human-readable table of `plan` (GiB per GPU)."""
    from ..memory_plan import GIB, count_params, micro_batches

    counts = count_params(cfg)
    rows = [
        f"layout: {plan.layout.describe()} (world {plan.layout.world_size})",
        f"params: total {counts.total / 1e9:.3f}B, activated {counts.activated / 1e9:.3f}B; "
        f"per GPU dense {plan.local_dense_params / 1e9:.3f}B + experts {plan.local_expert_params / 1e9:.3f}B",
    ]
    lay = plan.layout
    if lay.pp > 1:
        counts = lay.parallel().stage_layers(cfg.model.num_layers)
        rows.append(f"pipeline: pp={lay.pp}, layers per stage {counts}, {micro_batches(cfg, lay)} micro-batches per "
                    f"step (1F1B{f', in flushes of {lay.pp_flush}' if lay.pp_flush else ''}); per-stage totals "
                    f"{', '.join(f'{total / GIB:.1f}' for total in plan.stage_totals)} GiB; the largest, stage "
                    f"{plan.stage} ({counts[plan.stage]} layers"
                    f"{', embedding' if plan.stage == 0 else ''}{', head' if plan.stage == lay.pp - 1 else ''}), "
                    f"{min(lay.pp - plan.stage, micro_batches(cfg, lay))} micro-batches in flight:")
    for name in ("weights", "grads", "optimizer", "activations", "a2a_buffers", "pp_buffers", "overhead"):
        if name == "pp_buffers" and lay.pp == 1:
            continue
        rows.append(f"  {name:<12} {getattr(plan, name) / GIB:8.2f} GiB")
    verdict = "fits" if plan.fits(gpu_mem_gib) else "does NOT fit"
    rows.append(f"  {'total':<12} {plan.total_gib:8.2f} GiB  -> {verdict} in {gpu_mem_gib:g} GiB")
    if plan.layout.offload:
        rows.append(f"  {'host memory':<12} {plan.host / GIB:8.2f} GiB per GPU (offloaded optimizer state)")
    return "\n".join(rows)


def plan_fields(plan: MemoryPlan) -> dict:
    """Plan as a JSON-friendly dict (GiB values plus the layout)."""
    import dataclasses

    from ..memory_plan import GIB

    out = {k: v / GIB for k, v in dataclasses.asdict(plan).items() if isinstance(v, float)}
    out.update(total=plan.total_gib, layout=dataclasses.asdict(plan.layout), stage=plan.stage,
               stage_totals=[total / GIB for total in plan.stage_totals],
               local_dense_params=plan.local_dense_params, local_expert_params=plan.local_expert_params)
    return out
