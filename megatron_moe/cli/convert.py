"""Convert a dense LLaMA-family checkpoint (HF, Meta, or ours) into an MoE checkpoint (LLaMA-MoE stage 1).

    megatron-moe convert --load DENSE_DIR --save MOE_DIR --num-experts 16 --top-k 4 --method random [--verify]

Methods: random, clustering, co-activation, gradient, sharing-inner, sharing-inter, upcycle
(docs/expert_construction.md says when to use which). `--verify` exits 1 if the MoE with every expert at
weight 1 differs from the dense model by more than 1e-4 (fp32). Bad input: one line on stderr, exit 2.
The process keeps freed host memory for reuse, as CPU training does (host_memory.py: each layer's expert weights
are then written into memory the previous layer used instead of freshly faulted pages; an allocator the user chose
is left alone).
"""
from __future__ import annotations

from .common import add_dtype, add_load, add_progress, add_save

IMPORTS = ("megatron_moe.construct.convert",)  # what main needs, imported at start-up (cli/__init__.py)
VERIFY_TOL = 1e-4  # fp32 forward on the stored weights, any --dtype (docs/expert_construction.md)


def add_arguments(p) -> None:
    from ..config import ROUTERS
    from ..construct.partition import METHODS

    add_load(p, "dense checkpoint directory (HF, Meta, or a dense megatron_moe checkpoint)")
    add_save(p, "output MoE checkpoint directory (must not exist)")
    p.add_argument("--num-experts", type=int, default=16, help="routed experts E")
    p.add_argument("--top-k", type=int, default=4, help="experts per token K")
    p.add_argument("--method", default="random", choices=METHODS, help="how neurons are assigned to experts")
    p.add_argument("--router", "--gate", dest="router", default="noisy_topk", choices=ROUTERS,
                   help="moe.router of the result (--gate: old spelling)")
    p.add_argument("--gate-network", default="linear", choices=("linear", "mlp"), help="moe.gate_network")
    p.add_argument("--score-scale", "--scale-factor", dest="score_scale", type=float, default=None,
                   help="moe.score_scale s (default num_experts / top_k; --scale-factor: old spelling)")
    p.add_argument("--num-shared-experts", type=int, default=0, help="sharing-inter: always-on shared experts")
    p.add_argument("--seed", type=int, default=1227)
    p.add_argument("--cluster-on", default="up", choices=("up", "gate"),
                   help="clustering: rows of W_up or W_gate")
    p.add_argument("--metric", default="l2", choices=("l2", "cosine"), help="clustering distance")
    p.add_argument("--n-init", type=int, default=3, help="clustering: k-means restarts")
    p.add_argument("--granularity", type=int, default=1, help="upcycle: FFN slices g")
    p.add_argument("--virtual-groups", action="store_true",
                   help="upcycle: expert e holds shard e mod g, router rows shared per group (He et al. 2024)")
    p.add_argument("--weight-scaling", action="store_true",
                   help="upcycle with --virtual-groups: scale experts so the MoE starts equal to the dense model")
    p.add_argument("--drop-ratio", type=float, default=0.0,
                   help="upcycle: Drop-Upcycling, re-initialise this fraction of every expert's neurons")
    p.add_argument("--router-init", default="zero", choices=("zero", "kmeans", "expert-mean"),
                   help="linear gate rows at step 0: zero (LLaMA-MoE), kmeans (LLaMA-MoE v2, k-means of MLP inputs "
                        "on --calib-data), expert-mean (mean gate-projection row of each expert)")
    p.add_argument("--coact-fn", default="abs", choices=("abs", "square", "identity"), help="co-activation f")
    p.add_argument("--coact-threshold", type=float, default=0.0, help="co-activation: drop edges <= this")
    p.add_argument("--calib-data", nargs="*", default=[], help="JSONL / text files / indexed-dataset prefixes")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--calib-batch", type=int, default=4, help="calibration sequences per forward")
    p.add_argument("--tokenizer", default=None, help="tokenizer for text calibration data (default: in --load)")
    p.add_argument("--tp", type=int, default=1, help="target tensor-parallel size (validated)")
    p.add_argument("--ep", type=int, default=1, help="target expert-parallel size (validated)")
    add_dtype(p, None, "stored dtype (default: as the dense checkpoint)")
    p.add_argument("--verify", action="store_true", help="compare dense vs MoE logits (all experts, weight 1)")
    p.add_argument("--ignore-config-field", action="append", default=[], metavar="FIELD",
                   help="accept this config.json field although megatron_moe does not know it (repeatable); only "
                        "for fields you have checked do not change the computation")
    add_progress(p)


def options(args):
    from ..construct.convert import ConvertOptions

    return ConvertOptions(
        num_experts=args.num_experts, top_k=args.top_k, method=args.method, router=args.router,
        gate_network=args.gate_network, score_scale=args.score_scale, num_shared_experts=args.num_shared_experts,
        seed=args.seed, cluster_on=args.cluster_on, metric=args.metric, n_init=args.n_init,
        granularity=args.granularity, virtual_groups=args.virtual_groups, weight_scaling=args.weight_scaling,
        drop_ratio=args.drop_ratio, router_init=args.router_init,
        coact_fn=args.coact_fn, coact_threshold=args.coact_threshold,
        calib_data=list(args.calib_data), calib_tokens=args.calib_tokens, calib_seq_len=args.calib_seq_len,
        calib_batch=args.calib_batch, tokenizer=args.tokenizer, tp=args.tp, ep=args.ep, dtype=args.dtype,
        ignore_fields=list(args.ignore_config_field))


def main(args) -> int:
    import logging
    import sys

    from ..construct.convert import convert_dense_to_moe, verify_conversion
    from ..host_memory import keep_freed_host_memory

    allocator = keep_freed_host_memory()
    res = convert_dense_to_moe(args.load, args.save, options(args), progress=not args.no_progress)
    logging.getLogger(__name__).info("%s", allocator)  # after the work: a failure stays one line
    print(f"wrote {res.path} ({args.method}, {res.moe.num_experts} experts x {res.moe.expert_ffn_size}, "
          f"top-{res.moe.top_k}) in {res.seconds:.1f} s")
    if not args.verify:
        return 0
    delta = verify_conversion(args.load, args.save, ignore_fields=args.ignore_config_field)
    if args.method == "sharing-inner" or args.drop_ratio:
        what = "drop-upcycling" if args.drop_ratio else "sharing-inner"
        print(f"verify: max |logit delta| = {delta:.3e} ({what} is not lossless by design)")
    elif not delta <= VERIFY_TOL:  # a NaN delta is a failure too
        print(f"error: verify failed: max |logit delta| = {delta:.3e} > {VERIFY_TOL:g}", file=sys.stderr)
        return 1
    else:
        print(f"verify: max |logit delta| = {delta:.3e} <= {VERIFY_TOL:g} (all experts, weight 1)")
    return 0
