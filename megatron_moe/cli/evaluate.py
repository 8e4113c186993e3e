"""Per-domain perplexity over indexed datasets (--data), or lm-evaluation-harness tasks (--tasks).

    megatron-moe evaluate --load runs/x --data wiki=data/wiki_text_document code=data/code_text_document \
        --seq-len 512 --batch-size 8 --max-batches 50 [--json [FILE]]
    megatron-moe evaluate --load runs/x --tasks arc_easy,piqa,winogrande [--num-fewshot 0] [--limit 100] \
        [--batch-size 8] [--include-path my_tasks/] [--json results.json]
    megatron-moe evaluate --load hf/x-mixtral --tasks arc_easy      # an HF directory: the harness's HF backend

--tasks takes the harness's task names (and glob patterns); a checkpoint of ours is evaluated in-process in any
layout, an HF model directory through the harness's HF backend (`lm_eval --model hf`). docs/evaluation.md.
"""
from __future__ import annotations

from .common import add_device, add_dtype, add_json, add_load, add_progress, default_device, positive, torch_dtype
from .common import write_json


def add_arguments(p) -> None:
    add_load(p, "checkpoint or run directory; with --tasks also an HF model directory (an export)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", nargs="+", help="[NAME=]PREFIX of indexed datasets (one domain each): perplexity")
    what.add_argument("--tasks", help="comma-separated lm-evaluation-harness task names or patterns")
    p.add_argument("--seq-len", type=int, default=None,
                   help="--data: tokens per window; --tasks: max context length (default: model.max_seq_len)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, default=None, help="--data: batches per domain (default: all of it)")
    tasks = p.add_argument_group("--tasks (lm-evaluation-harness options)")
    tasks.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    tasks.add_argument("--limit", type=float, default=None,
                       help="examples per task (a count, or a fraction below 1); for testing, as in the harness")
    tasks.add_argument("--include-path", nargs="+", default=None, help="directories of local task YAML files")
    tasks.add_argument("--bootstrap-iters", type=int, default=100000, help="bootstrap iterations of the stderrs "
                                                                           "(0: none)")
    tasks.add_argument("--model-args", default=None,
                       help="HF directory only: extra harness model_args, KEY=VALUE,... (e.g. trust_remote_code=True)")
    tasks.add_argument("--tokenizer", default=None,
                       help="checkpoint only: tokenizer to use when the checkpoint carries none (.model, "
                            "tokenizer.json or a directory)")
    tasks.add_argument("--log-samples", action="store_true", help="keep every request and response in the JSON")
    add_device(p)
    add_dtype(p, "fp32", "compute dtype")
    add_json(p)
    add_progress(p)


def main(args) -> int:
    for name in ("--seq-len", "--batch-size", "--max-batches", "--limit"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    positive("--num-fewshot", args.num_fewshot, allow_zero=True)
    positive("--bootstrap-iters", args.bootstrap_iters, allow_zero=True)
    if args.tasks is not None:
        return _tasks(args)
    used = [f for f, v in (("--num-fewshot", args.num_fewshot), ("--limit", args.limit),
                           ("--include-path", args.include_path), ("--model-args", args.model_args),
                           ("--tokenizer", args.tokenizer), ("--log-samples", args.log_samples or None)) if v]
    if used:
        from ..errors import UserError

        raise UserError(f"{used[0]} goes with --tasks, not --data")
    return _perplexity(args)


def _perplexity(args) -> int:
    from .. import load_model
    from ..analysis.perplexity import evaluate_domains, open_domains, parse_domains
    from ..checkpoint import read_config

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


def _tasks(args) -> int:
    from ..analysis.downstream import evaluate_tasks, results_table
    from ..atomic import check_output
    from ..errors import UserError

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks is empty")
    if args.json not in (None, "-"):
        check_output(args.json, overwrite=True, flag="--json")  # a bad path fails before the model loads
    model_args = _model_args(args.model_args)
    res = evaluate_tasks(args.load, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                         limit=args.limit, batch_size=args.batch_size, device=default_device(args.device),
                         dtype=args.dtype, max_length=args.seq_len, tokenizer=args.tokenizer, model_args=model_args,
                         bootstrap_iters=args.bootstrap_iters, log_samples=args.log_samples,
                         progress=not args.no_progress)
    print(results_table(res))
    if args.json:
        write_json(res, args.json)
    return 0


def _model_args(text):
    if not text:
        return None
    from lm_eval.utils import simple_parse_args_string

    from ..errors import UserError

    try:
        return simple_parse_args_string(text)
    except Exception as err:  # the harness raises plain ValueError/IndexError on malformed strings
        raise UserError(f"--model-args {text!r}: expected KEY=VALUE,... ({err})") from None
