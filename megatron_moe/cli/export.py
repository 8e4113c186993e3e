"""Export a megatron_moe checkpoint as an HF model directory (safetensors, sharded with an index when large).

    megatron-moe export --load runs/x --save hf/x --format mixtral|qwen2-moe|llama-moe|llama [--dtype bf16]

mixtral: softmax_topk, or noisy_topk with a linear gate (score scale folded into w2); qwen2-moe: with shared
experts; llama-moe: LLaMA-MoE v1 layout, keeps the router (mlp gate, noise) and the scale; llama: dense.
"""
from __future__ import annotations

from .common import add_dtype, add_load, add_save, positive, torch_dtype


IMPORTS = ("megatron_moe.export",)  # what main needs, imported at start-up (cli/__init__.py)


def add_arguments(p) -> None:
    from ..formats import EXPORT_FORMATS

    add_load(p, "checkpoint directory, or a run directory (uses its latest checkpoint)")
    add_save(p, "output HF directory (must not exist)")
    p.add_argument("--format", required=True, choices=list(EXPORT_FORMATS), help="target layout")
    add_dtype(p, None, "output dtype (default: as stored)")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, GiB")


def main(args) -> int:
    from ..atomic import check_output
    from ..export import check_format, export_hf

    positive("--max-shard-gb", args.max_shard_gb)
    check_output(args.save)
    check_format(args.format, args.load)
    out = export_hf(args.load, args.save, args.format, torch_dtype(args.dtype),
                    max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote {out}")
    return 0
