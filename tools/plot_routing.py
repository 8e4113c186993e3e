#!/usr/bin/env python
"""Expert-load heatmaps per layer and per domain (the LLaMA-MoE gate-load figure) and a loss curve.

    python tools/plot_routing.py --load runs/x --data wiki=data/wiki_text_document code=data/code_text_document \
        --out plots/ [--metrics runs/x/metrics.jsonl] [--seq-len 512 --batch-size 8 --max-batches 20]

Writes expert_load_<domain>.png (layers x experts), expert_load_layer_<i>.png (domains x experts),
expert_load.json (token counts), and loss_curve.png when a metrics.jsonl is found (--metrics, or the run dir's).
"""
import argparse
import json
from pathlib import Path

from megatron_moe.cli import run


def main() -> None:
    from megatron_moe import load_model
    from megatron_moe.analysis.plots import plot_expert_load, plot_loss_curve
    from megatron_moe.analysis.routing import expert_load, moe_layer_indices
    from megatron_moe.errors import UserError
    from megatron_moe.evaluation import domain_batches, parse_domains

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="checkpoint or run directory")
    ap.add_argument("--data", required=True, nargs="+", help="[NAME=]PREFIX of indexed datasets (one domain each)")
    ap.add_argument("--out", required=True, help="output directory for the PNGs")
    ap.add_argument("--metrics", default=None, help="metrics.jsonl for the loss curve (default: RUN/metrics.jsonl)")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-batches", type=int, default=20)
    args = ap.parse_args()
    model = load_model(args.load)
    layers = moe_layer_indices(model)
    if not layers:
        raise UserError(f"{args.load}: a dense model has no routing to plot")
    seq_len = args.seq_len or model.cfg.max_seq_len
    loads = {}
    for name, prefixes in parse_domains(args.data).items():
        batches = (b[:, :-1] for b in domain_batches(prefixes, seq_len, args.batch_size, args.max_batches))
        loads[name] = expert_load(model, batches)
        if loads[name].sum() == 0:
            raise UserError(f"domain {name}: fewer than seq_len+1={seq_len + 1} tokens; lower --seq-len")
    paths = plot_expert_load(loads, layers, args.out)
    Path(args.out, "expert_load.json").write_text(json.dumps(
        {"layers": layers, "counts": {d: c.tolist() for d, c in loads.items()}}, indent=1))
    metrics = Path(args.metrics) if args.metrics else Path(args.load) / "metrics.jsonl"
    if metrics.is_file():
        paths.append(plot_loss_curve(metrics, Path(args.out) / "loss_curve.png"))
    elif args.metrics:
        raise UserError(f"{metrics}: no such metrics file")
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    run(main)
