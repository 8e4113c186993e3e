"""`python -m megatron_moe.reproduce --out DIR [--budget quick|full] [--rows a,b] [--docs DOCS_DIR]
[--include-path TASK_DIR] [--tasks a,b] [--num-fewshot N] [--limit N]`"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    from ..cli.common import Parser, guarded, setup_logging
    from .budget import BUDGETS
    from .methods import ROWS

    p = Parser(prog="python -m megatron_moe.reproduce", description=(sys.modules["megatron_moe.reproduce"].__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", "--save", dest="out", required=True, help="output and cache directory")
    p.add_argument("--budget", choices=list(BUDGETS), default="quick")
    p.add_argument("--rows", default=None, help=f"comma list of rows (default all: {', '.join(ROWS)})")
    p.add_argument("--docs", default=None, help="also copy report.md and the PNGs into this docs directory "
                                                "(as reproduction.md and images/reproduction_*.png)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--include-path", default=None,
                   help="a directory of lm-evaluation-harness task YAMLs: add their scores as downstream columns")
    p.add_argument("--tasks", default=None, help="comma list of harness tasks for the downstream columns "
                                                 "(default: every task under --include-path)")
    p.add_argument("--num-fewshot", type=int, default=None, help="downstream: few-shot examples")
    p.add_argument("--limit", type=float, default=None, help="downstream: examples per task")
    args = p.parse_args(argv)
    setup_logging()

    def go() -> int:
        import os

        import torch

        from ..errors import UserError
        from . import reproduce

        rows = args.rows.split(",") if args.rows else None
        unknown = [r for r in rows or () if r not in ROWS]
        if unknown:
            raise UserError(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        downstream = None
        if args.include_path or args.tasks:
            from .downstream import Downstream

            downstream = Downstream(args.include_path, args.tasks.split(",") if args.tasks else None,
                                    args.num_fewshot, args.limit)
        elif args.num_fewshot is not None or args.limit is not None:
            raise UserError("--num-fewshot and --limit go with --include-path or --tasks")
        res = reproduce(args.out, args.budget, rows, downstream=downstream)
        out = Path(args.out)
        print((out / "report.md").read_text())
        if args.docs:
            docs = Path(args.docs)
            (docs / "images").mkdir(parents=True, exist_ok=True)
            for png in ("cpt_curves.png", "expert_load.png"):
                shutil.copy2(out / png, docs / "images" / f"reproduction_{png}")
            (docs / "reproduction_results.md").write_text((out / "report.md").read_text())
        return 0 if res["rows"] else 1

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
