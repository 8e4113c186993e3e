"""Expert-load heatmaps per layer and per domain (the LLaMA-MoE gate-load figure) and a loss curve.

    megatron-moe plot --load runs/x --data wiki=data/wiki_text_document code=data/code_text_document \
        --save plots/ [--metrics runs/x/metrics.jsonl] [--seq-len 512 --batch-size 8 --max-batches 20]

Writes expert_load_<domain>.png (layers x experts), expert_load_layer_<i>.png (domains x experts),
expert_load.json (token counts), and loss_curve.png when a metrics.jsonl is found (--metrics, or the run dir's),
all into a new directory --save (written under a temporary name, renamed when complete; --overwrite replaces).
"""
from __future__ import annotations

from .common import add_load, add_save, positive


def add_arguments(p) -> None:
    add_load(p, "checkpoint or run directory")
    p.add_argument("--data", required=True, nargs="+", help="[NAME=]PREFIX of indexed datasets (one domain each)")
    add_save(p, "output directory for the PNGs and expert_load.json (--out: old spelling)", "--out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--metrics", default=None, help="metrics.jsonl for the loss curve (default: RUN/metrics.jsonl)")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=20)


def main(args) -> int:
    import json
    from pathlib import Path

    from .. import load_model
    from ..analysis.plots import plot_expert_load, plot_loss_curve
    from ..analysis.routing import expert_load, moe_layer_indices
    from ..atomic import AtomicDir, check_output
    from ..checkpoint import read_config
    from ..errors import UserError
    from ..analysis.perplexity import domain_batches, open_domains, parse_domains

    for name in ("--seq-len", "--batch-size", "--max-batches"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    check_output(args.save, overwrite=args.overwrite)
    model_cfg, moe_cfg, _ = read_config(args.load)
    if not moe_cfg.enabled:
        raise UserError(f"{args.load}: a dense model has no routing to plot")
    metrics = Path(args.metrics) if args.metrics else Path(args.load) / "metrics.jsonl"
    if args.metrics and not metrics.is_file():
        raise UserError(f"{metrics}: no such metrics file")
    domains = open_domains(parse_domains(args.data), model_cfg.vocab_size)
    model = load_model(args.load)
    layers = moe_layer_indices(model)
    seq_len = args.seq_len or model.cfg.max_seq_len
    loads = {}
    for name, datasets in domains.items():
        batches = (b[:, :-1] for b in domain_batches(datasets, seq_len, args.batch_size, args.max_batches))
        loads[name] = expert_load(model, batches)
        if loads[name].sum() == 0:
            raise UserError(f"domain {name}: fewer than seq_len+1={seq_len + 1} tokens; lower --seq-len")
    with AtomicDir(args.save, overwrite=args.overwrite) as tmp:
        names = [p.name for p in plot_expert_load(loads, layers, tmp)]
        (tmp / "expert_load.json").write_text(json.dumps(
            {"layers": layers, "counts": {d: c.tolist() for d, c in loads.items()}}, indent=1))
        if metrics.is_file():
            names.append(plot_loss_curve(metrics, tmp / "loss_curve.png").name)
    print("\n".join(str(Path(args.save) / n) for n in names))
    return 0
