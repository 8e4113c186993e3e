#!/usr/bin/env python
"""Convert a dense LLaMA-2 checkpoint (HF or Meta format) into an MoE checkpoint (LLaMA-MoE stage 1).

    python tools/convert_llama_to_moe.py --load DENSE_DIR --save MOE_DIR --num-experts 16 --top-k 4 \\
        --method random [--verify]

Methods: random, clustering, co-activation, gradient, sharing-inner, sharing-inter, upcycle
(docs/expert_construction.md says when to use which). Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_moe.config import ConfigError  # noqa: E402
from megatron_moe.construct.partition import METHODS, PartitionError  # noqa: E402

VERIFY_TOL = 1e-4  # fp32 forward on the stored weights, any --dtype (docs/expert_construction.md)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="dense LLaMA checkpoint directory (HF or Meta)")
    p.add_argument("--save", required=True, help="output MoE checkpoint directory (must not exist)")
    p.add_argument("--num-experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--method", default="random", help=", ".join(METHODS))
    p.add_argument("--gate", default="noisy_topk", help="noisy_topk | softmax_topk | switch | sigmoid")
    p.add_argument("--gate-network", default="linear", help="linear | mlp")
    p.add_argument("--scale-factor", type=float, default=None, help="score scale s (default num_experts / top_k)")
    p.add_argument("--num-shared-experts", type=int, default=0, help="sharing-inter: always-on shared experts")
    p.add_argument("--seed", type=int, default=1227)
    p.add_argument("--cluster-on", default="up", help="clustering: rows of W_up (up) or W_gate (gate)")
    p.add_argument("--metric", default="l2", help="clustering: l2 | cosine")
    p.add_argument("--n-init", type=int, default=3, help="clustering: k-means restarts")
    p.add_argument("--granularity", type=int, default=1, help="upcycle: FFN slices g")
    p.add_argument("--coact-fn", default="abs", help="co-activation: abs | square | identity")
    p.add_argument("--coact-threshold", type=float, default=0.0, help="co-activation: drop edges <= this")
    p.add_argument("--calib-data", nargs="*", default=[], help="JSONL / text files / indexed-dataset prefixes")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--calib-batch", type=int, default=4, help="calibration sequences per forward")
    p.add_argument("--tokenizer", default=None, help="tokenizer for text calibration data (default: in --load)")
    p.add_argument("--tp", type=int, default=1, help="target tensor-parallel size (validated)")
    p.add_argument("--ep", type=int, default=1, help="target expert-parallel size (validated)")
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: as stored)")
    p.add_argument("--verify", action="store_true", help="compare dense vs MoE logits (all experts, weight 1)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from megatron_moe.construct.calibration import CalibrationError
    from megatron_moe.construct.convert import ConvertOptions, convert_dense_to_moe, verify_conversion
    from megatron_moe.errors import UserError

    opts = ConvertOptions(
        num_experts=args.num_experts, top_k=args.top_k, method=args.method, router=args.gate,
        gate_network=args.gate_network, score_scale=args.scale_factor, num_shared_experts=args.num_shared_experts,
        seed=args.seed, cluster_on=args.cluster_on, metric=args.metric, n_init=args.n_init,
        granularity=args.granularity, coact_fn=args.coact_fn, coact_threshold=args.coact_threshold,
        calib_data=list(args.calib_data), calib_tokens=args.calib_tokens, calib_seq_len=args.calib_seq_len,
        calib_batch=args.calib_batch, tokenizer=args.tokenizer, tp=args.tp, ep=args.ep, dtype=args.dtype)
    try:
        res = convert_dense_to_moe(args.load, args.save, opts, progress=not args.no_progress)
        print(f"wrote {res.path} ({args.method}, {res.moe.num_experts} experts x {res.moe.expert_ffn_size}, "
              f"top-{res.moe.top_k}) in {res.seconds:.1f} s")
        if args.verify:
            delta = verify_conversion(args.load, args.save)
            tol = VERIFY_TOL
            if args.method == "sharing-inner":
                print(f"verify: max |logit delta| = {delta:.3e} (sharing-inner is not lossless by design)")
            elif delta > tol:
                print(f"error: verify failed: max |logit delta| = {delta:.3e} > {tol:g}", file=sys.stderr)
                return 1
            else:
                print(f"verify: max |logit delta| = {delta:.3e} <= {tol:g} (all experts, weight 1)")
    except (UserError, ConfigError, PartitionError, CalibrationError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
