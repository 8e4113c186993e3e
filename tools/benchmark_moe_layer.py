#!/usr/bin/env python
"""Benchmark our MoE layer (forward+backward) against a per-expert loop of nn.Linear modules and transformers'
MixtralSparseMoeBlock with the same config and weights, in the same run (timings alternating); prints time,
tokens/s, memory, the ratios, and the expert-matmul floor (the layer's matmul FLOPs at this machine's GEMM rate).

    python tools/benchmark_moe_layer.py                       # tiny CPU config
    python tools/benchmark_moe_layer.py --hidden 4096 --ffn 688 --experts 16 --top-k 4 --batch 1 --seq 512 \
        --threads 2 --no-mixtral                               # LLaMA-2-7B split into 16 experts, top-4
    python tools/benchmark_moe_layer.py ... --threads 1 --cpu-time     # CPU time: on a shared machine, leaves out
                                                                        # the time spent waiting for a core
    python tools/benchmark_moe_layer.py --hidden 1024 --ffn 2816 --seq 2048 --dtype bf16   # GPU

The benchmark code lives in benchmarks/moe_layer.py (not installed with the package: run from the repository).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a top-level directory, not installed


def main(argv=None) -> int:
    from megatron_moe.cli.common import Parser, add_dtype, add_json, guarded, torch_dtype, write_json

    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--ffn", type=int, default=256, help="FFN width of one expert")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    add_dtype(ap, "fp32", "compute dtype")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--use-kernels", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the main thread's CPU time (needs --threads 1): on a shared machine this leaves "
                         "out the time spent waiting for a core")
    ap.add_argument("--host-malloc", default="keep", choices=["keep", "system"],
                    help="keep: the process keeps freed host memory for reuse, as CPU training does "
                         "(megatron_moe/host_memory.py); system: glibc's default (large blocks unmapped on free)")
    ap.add_argument("--no-mixtral", action="store_true",
                    help="skip transformers' Mixtral block (slow, and a second copy of the weights, at large shapes)")
    add_json(ap)
    args = ap.parse_args(argv)

    def go() -> int:
        import torch

        from benchmarks.moe_layer import run_benchmark
        from megatron_moe.errors import UserError

        if args.warmup < 0 or args.iters < 1:
            raise UserError("--warmup must be >= 0 and --iters >= 1")
        if args.threads:
            torch.set_num_threads(args.threads)
        malloc = "system"
        if args.host_malloc == "keep":
            from megatron_moe.host_memory import keep_freed_host_memory

            malloc = keep_freed_host_memory()
        if args.cpu_time and torch.get_num_threads() != 1:
            raise UserError("--cpu-time needs --threads 1 (the time of other threads would not be counted)")
        res = run_benchmark(args.hidden, args.ffn, args.experts, args.top_k, args.batch, args.seq, args.device,
                            torch_dtype(args.dtype), args.warmup, args.iters, args.use_kernels,
                            mixtral=not args.no_mixtral, cpu_time=args.cpu_time)
        res["config"]["host_malloc"] = malloc
        print(f"config: {res['config']}  (outputs agree to {res['max_abs_diff']:.2e})")
        for name in ("ours", "loop", "mixtral_hf"):
            if name not in res:
                continue
            r = res[name]
            mem = {k: f"{v / 2**20:.1f} MiB" for k, v in r.items() if k.endswith("bytes")}
            print(f"{name:>10}: fwd+bwd {r['median_s'] * 1e3:8.2f} ms  {r['tokens_per_s']:10.0f} tokens/s  {mem}")
            if "user_s" in r:
                print(f"{'':>10}  of which user {r['user_s'] * 1e3:.0f} ms, system {r['system_s'] * 1e3:.0f} ms, "
                      f"{r['minor_faults']:.0f} minor page faults (medians)")
        fl = res["floor"]
        print(f"     floor: fwd+bwd {fl['median_s'] * 1e3:8.2f} ms  (expert matmul FLOPs at "
              f"{fl['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s, this machine's GEMM rate measured in the alternation)")
        print(f"ours vs loop (loop time / ours): {res['vs_loop']:.2f}x (median of per-iteration ratios "
              f"{res['vs_loop_per_iteration_median']:.2f}x); ours / floor: {res['ours_over_floor']:.2f}x; "
              f"loop / floor: {res['loop_over_floor']:.2f}x")
        if "speedup" in res:
            print(f"speedup (Mixtral time / ours): {res['speedup']:.2f}x; bound from the floor "
                  f"(Mixtral time / floor): {res['max_possible_speedup']:.2f}x")
        if args.json:
            write_json(res, args.json)
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
