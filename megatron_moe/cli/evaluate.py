"""Per-domain loss and perplexity of a checkpoint over indexed datasets (batched, progress bar).

    megatron-moe evaluate --load runs/x --data wiki=data/wiki_text_document code=data/code_text_document \
        --seq-len 512 --batch-size 8 --max-batches 50 [--json [FILE]]
"""
from __future__ import annotations

from .common import add_device, add_dtype, add_json, add_load, add_progress, default_device, positive, torch_dtype
from .common import write_json


def add_arguments(p) -> None:
    add_load(p, "checkpoint or run directory")
    p.add_argument("--data", required=True, nargs="+", help="[NAME=]PREFIX of indexed datasets (one domain each)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: model.max_seq_len)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=None, help="per domain (default: all of it)")
    add_device(p)
    add_dtype(p, "fp32", "compute dtype")
    add_json(p)
    add_progress(p)


def main(args) -> int:
    from .. import load_model
    from ..checkpoint import read_config
    from ..analysis.perplexity import evaluate_domains, open_domains, parse_domains

    for name in ("--seq-len", "--batch-size", "--max-batches"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    model_cfg, _, _ = read_config(args.load)
    seq_len = args.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        from ..errors import UserError

        raise UserError(f"--seq-len={seq_len} exceeds the model's max_seq_len={model_cfg.max_seq_len}")
    domains = open_domains(parse_domains(args.data), model_cfg.vocab_size)  # validated before the model loads
    model = load_model(args.load, device=default_device(args.device), dtype=torch_dtype(args.dtype))
    res = evaluate_domains(model, domains, seq_len, args.batch_size, args.max_batches,
                           progress=not args.no_progress)
    for name, r in res.items():
        print(f"{name:20s} loss {r['loss']:.4f}  ppl {r['ppl']:.2f}  ({r['tokens']} tokens)")
    if args.json:
        write_json(res, args.json)
    return 0
