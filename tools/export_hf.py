#!/usr/bin/env python
"""Export a megatron_moe checkpoint as an HF model directory (safetensors, sharded with an index when large).

    python tools/export_hf.py --load runs/x --save hf/x --format mixtral|llama-moe|qwen2-moe|llama [--dtype bf16]

mixtral: softmax_topk, or noisy_topk with a linear gate (score scale folded into w2); qwen2-moe: with shared
experts; llama-moe: LLaMA-MoE v1 layout, keeps the router (mlp gate, noise) and the scale; llama: dense.
"""
import argparse

from megatron_moe.cli import run


def main() -> None:
    from megatron_moe.export import DTYPES, FORMATS, export_hf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="checkpoint directory, or a run directory (uses its latest)")
    ap.add_argument("--save", required=True, help="output HF directory (must not exist)")
    ap.add_argument("--format", required=True, choices=list(FORMATS), help="target layout")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="output dtype (default: as stored)")
    ap.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard")
    args = ap.parse_args()
    out = export_hf(args.load, args.save, args.format, DTYPES.get(args.dtype),
                    max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
