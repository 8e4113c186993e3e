"""Training throughput benchmark.

    python tools/benchmark_training.py cpu [--layers 4 --hidden 256 --experts 8 --top-k 2 --ffn 256 --seq 128
                                            --batch 8 --steps 10]
        tokens/s of fwd+bwd+AdamW for our MoE model vs transformers MixtralForCausalLM (same config and data)
    python tools/benchmark_training.py gpu [--layers 4 --seq 4096 --micro-batch 1 --steps 5]
        one training step of LLaMA-MoE-3.5B-shaped layers on the current GPU, with MFU on activated parameters
    python tools/benchmark_training.py host-memory [--steps 30 --warmup 5 --repeats 2 --workdir DIR] [KEY=VALUE ...]
        the `train` command on CPU with train.keep_host_memory=true against false (glibc's default allocator),
        whole processes alternating: step time, CPU time, peak RSS, and that the losses are identical; KEY=VALUE
        overrides replace the model (default: benchmarks/training.py HOST_MEMORY_MODEL)

The benchmark code lives in benchmarks/training.py (not installed with the package: run from the repository).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a top-level directory, not installed


def main() -> int:
    from megatron_moe.cli import run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cpu")
    for name, default in (("layers", 4), ("hidden", 256), ("experts", 8), ("top-k", 2), ("ffn", 256), ("seq", 128),
                          ("batch", 8), ("steps", 10), ("threads", 0)):
        c.add_argument(f"--{name}", type=int, default=default)
    gp = sub.add_parser("gpu")
    for name, default in (("layers", 4), ("seq", 4096), ("micro-batch", 1), ("steps", 5)):
        gp.add_argument(f"--{name}", type=int, default=default)
    hm = sub.add_parser("host-memory")
    for name, default in (("steps", 30), ("warmup", 5), ("repeats", 2)):
        hm.add_argument(f"--{name}", type=int, default=default)
    hm.add_argument("--workdir", default="/tmp/bench_host_memory")
    hm.add_argument("model", nargs="*", help="train overrides that replace the default model")
    args = p.parse_args()

    def go() -> int:
        import torch

        from benchmarks import training as bench

        stamp = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                 "torch": torch.__version__}
        if args.mode == "host-memory":
            out = {**stamp, **bench.host_memory_ab(args.workdir, args.steps, args.warmup, args.repeats,
                                                       tuple(args.model) or bench.HOST_MEMORY_MODEL)}
            for name in ("keep", "system"):
                r = out[name]
                print(f"{name + ':':<7} step {r['step_s'] * 1e3:.0f} ms ({r['tokens_per_s']:.0f} tokens/s), CPU user "
                      f"{r['user_s']:.1f} s system {r['system_s']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB, "
                      f"after the last step {r['last_rss_gib']:.2f} GiB")
            print(f"step time system / keep: {out['speedup']:.2f}x; losses identical: {out['same_losses']}")
        elif args.mode == "cpu":
            if args.threads:
                torch.set_num_threads(args.threads)
            cfg = bench.demo_config(args.layers, args.hidden, args.experts, args.top_k, args.ffn, seq_len=args.seq)
            r = bench.cpu_vs_mixtral(cfg, batch=args.batch, steps=args.steps)
            out = {**stamp, "threads": torch.get_num_threads(), "config": vars(args),
                   "ours_tokens_per_sec": round(r["ours"].tokens_per_sec, 1),
                   "mixtral_tokens_per_sec": round(r["mixtral"].tokens_per_sec, 1),
                   "ours_step_ms": round(r["ours"].step_ms, 1), "mixtral_step_ms": round(r["mixtral"].step_ms, 1),
                   "speedup": round(r["ratio"], 3)}
        else:
            if not torch.cuda.is_available():
                print("error: gpu mode needs a CUDA device", file=sys.stderr)
                return 2
            cfg = bench.llama_moe_35b_config(args.layers, args.seq)
            out = {**stamp, "config": vars(args), **bench.gpu_step(cfg, torch.device("cuda", torch.cuda.current_device()), args.micro_batch, args.steps)}
        print(json.dumps(out, indent=1))
        return 0

    run(go)
    return 0


if __name__ == "__main__":
    main()
