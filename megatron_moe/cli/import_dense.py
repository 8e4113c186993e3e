"""Import a dense LLaMA-family checkpoint (HF or Meta format, detected) into a megatron_moe checkpoint.

    megatron-moe import --load /models/Llama-2-7b-hf --save ckpts/llama2-7b [--dtype bf16]
"""
from __future__ import annotations

from .common import add_dtype, add_load, add_progress, add_save, torch_dtype


IMPORTS = ("megatron_moe.construct.import_dense",)  # what main needs, imported at start-up (cli/__init__.py)


def add_arguments(p) -> None:
    add_load(p, "dense checkpoint directory (HF config.json + weights, or Meta params.json + consolidated.*.pth)")
    add_save(p, "output checkpoint directory (must not exist)")
    add_dtype(p, "fp32", "stored dtype")
    p.add_argument("--ignore-config-field", action="append", default=[], metavar="FIELD",
                   help="accept this config.json field although megatron_moe does not know it (repeatable); only "
                        "for fields you have checked do not change the computation")
    add_progress(p)


def main(args) -> int:
    from ..atomic import check_output
    from ..construct.import_dense import import_dense

    check_output(args.save)
    out = import_dense(args.load, args.save, torch_dtype(args.dtype), progress=not args.no_progress,
                       ignore_fields=args.ignore_config_field)
    print(f"wrote {out}")
    return 0
