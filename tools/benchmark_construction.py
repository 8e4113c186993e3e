#!/usr/bin/env python
"""Benchmarks of expert construction; each measures its baseline in the same run and prints ratios.

    # balanced k-means (ours) vs k-means-constrained on a small problem, then ours alone on 11008x4096
    python tools/benchmark_construction.py clustering [--small 2752x1024] [--full 11008x4096] [--experts 16]

    # streaming conversion of a 7B-shaped random checkpoint (HF sharded safetensors, N layers)
    # vs `cp -r` of the same files: wall time and peak RSS
    python tools/benchmark_construction.py streaming --layers 8 --workdir /tmp/bench7b
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_moe.construct.partition import balanced_kmeans, kmeans_cost  # noqa: E402


def _shape(text: str) -> tuple[int, int]:
    n, d = text.lower().split("x")
    return int(n), int(d)


def _rows(n: int, d: int, k: int, seed: int, kind: str) -> torch.Tensor:
    """L2-normalised rows: a Gaussian mixture with 3k centres (structured) or plain Gaussian."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        x = torch.randn(n, d, generator=g)
    else:
        centres = torch.randn(3 * k, d, generator=g)
        x = centres[torch.randint(3 * k, (n,), generator=g)] + 1.5 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def _header() -> str:
    return (f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")


def bench_clustering(args) -> None:
    from k_means_constrained import KMeansConstrained

    print(_header())
    K = args.experts
    n, d = _shape(args.small)
    x = _rows(n, d, K, args.seed, args.data)
    warm = _rows(64 * K, 16, K, args.seed, args.data)  # first-call overheads out of both timings
    balanced_kmeans(warm, K, seed=args.seed, n_init=1)
    KMeansConstrained(n_clusters=K, size_min=64, size_max=64, n_init=1, random_state=0).fit(warm.numpy())
    t0 = time.perf_counter()
    labels, ours = balanced_kmeans(x, K, seed=args.seed, n_init=args.n_init)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = KMeansConstrained(n_clusters=K, size_min=n // K, size_max=n // K, random_state=args.seed,
                            n_init=args.kmc_n_init).fit(x.numpy())
    t_ref = time.perf_counter() - t0
    theirs = kmeans_cost(x, torch.as_tensor(ref.labels_).long(), K)
    print(f"small {n}x{d} -> {K} ({args.data}): ours {t_ours:.2f} s (n_init={args.n_init}), cost {ours:.3f} | "
          f"k-means-constrained {t_ref:.2f} s (n_init={args.kmc_n_init}), cost {theirs:.3f}")
    print(f"  speed-up {t_ref / t_ours:.1f}x, cost ratio ours/theirs {ours / theirs:.4f}")
    if args.full:
        n, d = _shape(args.full)
        x = _rows(n, d, K, args.seed, args.data)
        t0 = time.perf_counter()
        labels, cost = balanced_kmeans(x, K, seed=args.seed, n_init=args.n_init)
        t_full = time.perf_counter() - t0
        sizes = torch.bincount(labels, minlength=K)
        print(f"full {n}x{d} -> {K} ({args.data}): ours {t_full:.2f} s, cost {cost:.3f}, "
              f"cluster sizes {int(sizes.min())}..{int(sizes.max())}")


def _write_7b_slice(path: Path, layers: int, seed: int = 0) -> int:
    """HF LLaMA-2-7B-shaped checkpoint with `layers` layers of random fp16 weights, one safetensors
    shard per layer (plus embed/final shards) and an index, as HF shards it. Returns bytes written."""
    import json

    from safetensors.torch import save_file

    D, F_d, V = 4096, 11008, 32000
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).half()  # noqa: E731
    weight_map, shards = {}, []
    shards.append({"model.embed_tokens.weight": rnd(V, D)})
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({p + "input_layernorm.weight": torch.ones(D).half(),
                       p + "post_attention_layernorm.weight": torch.ones(D).half(),
                       **{p + f"self_attn.{n}_proj.weight": rnd(D, D) for n in "qkvo"},
                       p + "mlp.gate_proj.weight": rnd(F_d, D), p + "mlp.up_proj.weight": rnd(F_d, D),
                       p + "mlp.down_proj.weight": rnd(D, F_d)})
    shards.append({"model.norm.weight": torch.ones(D).half(), "lm_head.weight": rnd(V, D)})
    total = 0
    for k, sd in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sd, str(path / name))
        total += (path / name).stat().st_size
        weight_map.update({n: name for n in sd})
        del sd
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D, "intermediate_size": F_d,
        "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": V,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float16",
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}))
    return total


def _timed_child(cmd: list) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a child process (ru_maxrss of the waited-for child)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{cmd[0]} failed: {err.read()[-2000:]}")
    return wall, ru.ru_maxrss / 2 ** 20


def bench_streaming(args) -> None:
    print(_header())
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tool = str(Path(__file__).resolve().parent / "convert_llama_to_moe.py")
    try:
        for layers in [int(x) for x in str(args.layers).split(",")]:
            src = work / f"dense_{layers}"
            t0 = time.perf_counter()
            # in a child: the parent's RSS must stay small, because a spawned child's ru_maxrss starts at
            # the parent's high-water mark on Linux (exec records the old mm's peak)
            subprocess.run([sys.executable, __file__, "make-slice", str(src), str(layers)], check=True)
            size = sum(f.stat().st_size for f in src.iterdir())
            print(f"{layers} layers: wrote {size / 2 ** 30:.2f} GiB of HF shards in {time.perf_counter() - t0:.0f} s")
            subprocess.run(["sync"], check=False)
            t_cp, rss_cp = _timed_child(["cp", "-r", str(src), str(work / "copy")])
            t_sync = time.perf_counter()
            subprocess.run(["sync"], check=False)  # convert makes its output durable; a fair copy does too
            t_sync = time.perf_counter() - t_sync
            t_cv, rss_cv = _timed_child([sys.executable, tool, "--load", str(src), "--save", str(work / "moe"),
                                         "--num-experts", str(args.experts), "--top-k", "4", "--method", "random",
                                         "--no-progress"])
            print(f"  cp -r: {t_cp:.1f} s (+ sync {t_sync:.1f} s) | convert (random, {args.experts} experts): "
                  f"{t_cv:.1f} s, peak RSS {rss_cv:.2f} GiB | time ratio convert/cp {t_cv / t_cp:.2f}, "
                  f"convert/(cp+sync) {t_cv / (t_cp + t_sync):.2f}")
            for d in (src, work / "copy", work / "moe"):
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clustering", help="balanced k-means vs k-means-constrained")
    c.add_argument("--small", default="2752x1024", help="NxD of the comparison problem")
    c.add_argument("--full", default="11008x4096", help="NxD of the ours-only problem ('' to skip)")
    c.add_argument("--experts", type=int, default=16)
    c.add_argument("--data", choices=("mixture", "gaussian"), default="mixture")
    c.add_argument("--n-init", type=int, default=3)
    c.add_argument("--kmc-n-init", type=int, default=10, help="k-means-constrained restarts (its default: 10)")
    c.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("streaming", help="convert a 7B-shaped random checkpoint vs cp -r")
    s.add_argument("--workdir", default="/tmp/bench_construction")
    s.add_argument("--layers", default="8", help="comma list, e.g. 4,8 (peak RSS should stay flat)")
    s.add_argument("--experts", type=int, default=16)
    s.add_argument("--keep", action="store_true", help="keep the generated files")
    m = sub.add_parser("make-slice", help=argparse.SUPPRESS)
    m.add_argument("path")
    m.add_argument("layers", type=int)
    args = p.parse_args(argv)
    if args.cmd == "make-slice":
        _write_7b_slice(Path(args.path), args.layers)
        return 0
    {"clustering": bench_clustering, "streaming": bench_streaming}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
