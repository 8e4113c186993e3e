#!/usr/bin/env python
"""Benchmarks of expert construction; each measures its baseline in the same run and prints ratios.

    # balanced k-means (ours) vs k-means-constrained on a small problem, then ours alone on 11008x4096
    python tools/benchmark_construction.py clustering [--small 2752x1024] [--full 11008x4096] [--experts 16]

    # streaming conversion of a LLaMA-2-7B-shaped random bf16 checkpoint (HF sharded safetensors, N layers)
    # vs `cp -r` + `sync` of the same files, alternating, medians: wall time, CPU time and peak RSS
    # (--variant glibc-malloc / no-write-behind / with-crc, repeatable: also convert with that speed-up off)
    python tools/benchmark_construction.py streaming --layers 16,32 --repeats 3 --workdir /work/bench7b

    # writing checkpoint parts (one converted LLaMA-2-7B layer each, fresh tensors per part as the converter
    # makes them): ours (checkpoint.store.dcp_save: 1 MiB writes, records without CRC32) vs DCP's
    # FileSystemWriter as it comes, alternating, same tensors; wall time of the writes and of the sync after them
    python tools/benchmark_construction.py write --parts 4 --repeats 4 --workdir /work/bench_write
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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    return (f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
            f"{platform.processor() or platform.machine()}, "
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


def _write_7b_slice(path: Path, layers: int, seed: int = 0, dtype: str = "bf16") -> int:
    """HF LLaMA-2-7B-shaped checkpoint with `layers` layers of random `dtype` weights, one safetensors
    shard per layer (plus embed/final shards) and an index, as HF shards it. Returns bytes written."""
    import json

    from safetensors.torch import save_file

    D, F_d, V = 4096, 11008, 32000
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    rnd = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).to(tdt)  # noqa: E731
    weight_map, total = {}, 0
    n_shards = layers + 2

    def shard(i):  # built one at a time: memory stays at one layer
        if i == 0:
            return {"model.embed_tokens.weight": rnd(V, D)}
        if i == n_shards - 1:
            return {"model.norm.weight": torch.ones(D).to(tdt), "lm_head.weight": rnd(V, D)}
        p = f"model.layers.{i - 1}."
        return {p + "input_layernorm.weight": torch.ones(D).to(tdt),
                p + "post_attention_layernorm.weight": torch.ones(D).to(tdt),
                **{p + f"self_attn.{n}_proj.weight": rnd(D, D) for n in "qkvo"},
                p + "mlp.gate_proj.weight": rnd(F_d, D), p + "mlp.up_proj.weight": rnd(F_d, D),
                p + "mlp.down_proj.weight": rnd(D, F_d)}

    for k in range(n_shards):
        sd = shard(k)
        name = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(sd, str(path / name))
        total += (path / name).stat().st_size
        weight_map.update({n: name for n in sd})
        del sd
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D, "intermediate_size": F_d,
        "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": V,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "torch_dtype": {"bf16": "bfloat16", "fp16": "float16"}[dtype],
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}))
    return total


def _timed_cmds(cmds: list) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS GiB of the largest) of commands run one after another."""
    wall = cpu = rss = 0.0
    for cmd in cmds:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
        wall += time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.read().decode()[-2000:]}")
        proc.stderr.close()
        cpu += ru.ru_utime + ru.ru_stime
        rss = max(rss, ru.ru_maxrss / 2 ** 20)
    return wall, cpu, rss


def _convert_with(patch: str) -> str:
    """`python -c` source running convert with `patch` (Python statements) applied first."""
    return ("import sys; sys.path.insert(0, %r)\n%s\nfrom megatron_moe.cli import tool\nsys.argv[0] = 'convert'\n"
            "tool('convert')\n" % (str(Path(__file__).resolve().parents[1]), patch))


# contenders besides convert as it is, each the same command with one thing switched off: name -> (patch, label)
VARIANTS = {
    "glibc-malloc": ("import megatron_moe.host_memory as h\n"
                     "h.keep_freed_host_memory = lambda: 'host allocator left as is (benchmark baseline)'",
                     "convert, glibc's default allocator"),
    "no-write-behind": ("import megatron_moe.checkpoint.store as s\ns.flush_and_drop = lambda path: None",
                        "convert without write-behind (all flushed at commit)"),
    "with-crc": ("import contextlib\nimport megatron_moe.checkpoint.write_stream as w\n"
                 "w.records_without_crc = contextlib.nullcontext",
                 "convert with CRC32 in every record (torch.save's default)"),
}


def bench_streaming(args) -> None:
    """Convert (random, E experts) against `cp -r` + `sync` of the same files, alternating, medians of --repeats.
    convert makes its output durable (fsync at commit), so cp + sync is the fair baseline."""
    import statistics

    print(_header())
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tool = str(Path(__file__).resolve().parent / "convert_llama_to_moe.py")
    variants = list(args.variant) + (["glibc-malloc"] if args.host_malloc_ab else [])
    rows, var_rows = [], []
    try:
        for layers in [int(x) for x in str(args.layers).split(",")]:
            need = (2 * 2 ** 30 + layers * 404 * 2 ** 20) * 2  # source + one output at a time, bf16
            free = shutil.disk_usage(work).free
            if free < need * 1.1:
                print(f"{layers} layers: skipped, needs {need / 2**30:.0f} GiB free on {work}, "
                      f"{free / 2**30:.0f} GiB are")
                continue
            src = work / f"dense_{layers}"
            t0 = time.perf_counter()
            # in a child: the parent's RSS must stay small, because a spawned child's ru_maxrss starts at
            # the parent's high-water mark on Linux (exec records the old mm's peak)
            subprocess.run([sys.executable, __file__, "make-slice", str(src), str(layers), "--dtype", args.dtype],
                           check=True)
            size = sum(f.stat().st_size for f in src.iterdir())
            print(f"{layers} layers: wrote {size / 2 ** 30:.2f} GiB of {args.dtype} HF shards in "
                  f"{time.perf_counter() - t0:.0f} s")
            subprocess.run(["sync"], check=False)
            cp, cv, var_times = [], [], {name: [] for name in variants}
            flags = ["--load", str(src), "--save", str(work / "moe"), "--num-experts", str(args.experts),
                     "--top-k", "4", "--method", "random", "--no-progress"]
            converts = {"convert": ([sys.executable, tool, *flags], cv, "convert")}
            for name in variants:
                patch, label = VARIANTS[name]
                converts[name] = ([sys.executable, "-c", _convert_with(patch), *flags], var_times[name], label)
            order = ["cp", "convert"] + variants
            for r in range(args.repeats):
                for who in order[r % len(order):] + order[:r % len(order)]:
                    if who == "cp":
                        t_cp = _timed_cmds([["cp", "-r", str(src), str(work / "copy")]])
                        t_sync = _timed_cmds([["sync"]])
                        cp.append((t_cp[0] + t_sync[0], t_cp[0], t_sync[0], t_cp[1] + t_sync[1]))
                        shutil.rmtree(work / "copy")
                        print(f"  repeat {r + 1}: cp -r {t_cp[0]:.1f} s + sync {t_sync[0]:.1f} s "
                              f"({t_cp[1] + t_sync[1]:.1f} s CPU)")
                    else:
                        cmd, times, label = converts[who]
                        times.append(_timed_cmds([cmd]))
                        shutil.rmtree(work / "moe")
                        print(f"  repeat {r + 1}: {label} {times[-1][0]:.1f} s ({times[-1][1]:.1f} s CPU), "
                              f"peak RSS {times[-1][2]:.2f} GiB")
                    subprocess.run(["sync"], check=False)  # nothing of one run is flushed during the next
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            rows.append((layers, size, med(cp, 1), med(cp, 2), med(cp, 0), med(cv, 0), med(cv, 0) / med(cp, 0),
                         max(x[2] for x in cv), med(cp, 3), med(cv, 1)))
            for name in variants:
                vt = var_times[name]
                var_rows.append((layers, VARIANTS[name][1], med(vt, 0), med(cv, 0), med(vt, 0) / med(cv, 0),
                                 max(x[2] for x in vt), max(x[2] for x in cv)))
            shutil.rmtree(src)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"medians of {args.repeats} alternating repeats")
    print("| layers | dense size | cp -r | sync | cp + sync | convert | convert / (cp + sync) | convert peak RSS | "
          "CPU: cp + sync / convert |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for layers, size, c, sy, cs, cv_, ratio, rss, cpu_cp, cpu_cv in rows:
        print(f"| {layers} | {size / 2**30:.2f} GiB | {c:.1f} s | {sy:.1f} s | {cs:.1f} s | {cv_:.1f} s | "
              f"{ratio:.2f}× | {rss:.2f} GiB | {cpu_cp:.1f} s / {cpu_cv:.1f} s |")
    if var_rows:
        print("\n| layers | contender | its time | convert | convert's speed-up | peak RSS contender / convert |")
        print("| --- | --- | --- | --- | --- | --- |")
        for layers, label, t_var, t_cv, ratio, rss_var, rss_cv in var_rows:
            print(f"| {layers} | {label} | {t_var:.1f} s | {t_cv:.1f} s | {ratio:.2f}× | "
                  f"{rss_var:.2f} / {rss_cv:.2f} GiB |")


def _converted_layer(seed: int) -> dict:
    """One LLaMA-2-7B layer as the converter writes it (16 experts of 688, bf16): 405 MB in 9 tensors."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(torch.bfloat16)  # noqa: E731
    D, E, F_e = 4096, 16, 688
    return {**{f"attn.w{n}": rnd(D, D) for n in "qkvo"}, "moe.gate": rnd(E, D), "moe.w1": rnd(E, F_e, D),
            "moe.w3": rnd(E, F_e, D), "moe.w2": rnd(E, D, F_e), "norm": torch.ones(D, dtype=torch.bfloat16)}


def bench_write(args) -> None:
    """dcp_save (1 MiB writes, records without CRC32 since 4be3841) against DCP's own FileSystemWriter on the same
    tensors, alternating."""
    import statistics
    import warnings

    import torch.distributed.checkpoint as dcp

    from megatron_moe.checkpoint.store import dcp_save

    def dcp_as_it_comes(tensors, path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(path), sync_files=False), no_dist=True)

    writers = {"ours": lambda t, p: dcp_save(t, p, no_dist=True, sync_files=False), "DCP": dcp_as_it_comes}
    print(_header())
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    times = {w: [] for w in writers}
    size = 0
    try:
        for r in range(args.repeats):
            for who in (("ours", "DCP") if r % 2 == 0 else ("DCP", "ours")):
                wall = 0.0
                for i in range(args.parts):
                    tensors = _converted_layer(seed=i)  # fresh memory each part, as in a conversion
                    t0 = time.perf_counter()
                    writers[who](tensors, work / who / f"layer_{i:03d}")
                    wall += time.perf_counter() - t0
                    del tensors
                t0 = time.perf_counter()
                os.sync()
                synced = time.perf_counter() - t0
                size = sum(f.stat().st_size for f in (work / who).rglob("*") if f.is_file())
                times[who].append((wall, synced))
                print(f"  repeat {r + 1}: {who} wrote {size / 2**30:.2f} GiB in {wall:.2f} s "
                      f"({size / wall / 1e9:.2f} GB/s), sync {synced:.2f} s")
                shutil.rmtree(work / who)
                os.sync()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {w: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for w, ts in times.items()}
    print(f"medians of {args.repeats} alternating repeats, {args.parts} parts of {size / args.parts / 1e6:.0f} MB")
    print("| writer | write | GB/s | sync after | write + sync |")
    print("| --- | --- | --- | --- | --- |")
    for w, (wall, synced) in med.items():
        print(f"| {w} | {wall:.2f} s | {size / wall / 1e9:.2f} | {synced:.2f} s | {wall + synced:.2f} s |")
    ratio = sum(med["DCP"]) / sum(med["ours"])
    print(f"write + sync, DCP's writer / ours: {ratio:.2f}x")


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
    s.add_argument("--layers", default="16,32", help="comma list (peak RSS should stay flat); 32 = LLaMA-2-7B")
    s.add_argument("--experts", type=int, default=16)
    s.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    s.add_argument("--repeats", type=int, default=3, help="alternating cp / convert pairs; medians are reported")
    s.add_argument("--keep", action="store_true", help="keep the generated files")
    s.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                   help="also time convert with one of its speed-ups switched off (repeatable; each is one more "
                        "contender in the alternation): glibc-malloc = glibc's default allocator, no-write-behind "
                        "= parts flushed only at commit, not dropped from the page cache, with-crc = records "
                        "with torch.save's CRC32s")
    s.add_argument("--host-malloc-ab", action="store_true", help="the same as --variant glibc-malloc")
    w = sub.add_parser("write", help="writing checkpoint parts: ours vs DCP's FileSystemWriter as it comes")
    w.add_argument("--workdir", default="/tmp/bench_write")
    w.add_argument("--parts", type=int, default=4, help="parts (one converted 7B layer each) per repeat")
    w.add_argument("--repeats", type=int, default=4, help="alternating pairs; medians are reported")
    m = sub.add_parser("make-slice", help=argparse.SUPPRESS)
    m.add_argument("path")
    m.add_argument("layers", type=int)
    m.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    args = p.parse_args(argv)
    if args.cmd == "make-slice":
        _write_7b_slice(Path(args.path), args.layers, dtype=args.dtype)
        return 0
    {"clustering": bench_clustering, "streaming": bench_streaming, "write": bench_write}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
