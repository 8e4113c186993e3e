"""Benchmarks of the MoE kernels against baselines measured in the same run (the body of
tools/benchmark_kernels.py; lives outside the installed packages).

Shape legend: T tokens, D hidden, F expert FFN, E experts, K top-k.
Baselines: expert MLP via torch._grouped_mm with explicit permute/unpermute, a per-expert loop (the torch
twin), and eager torch gating (softmax + topk + histogram).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F_

from moe_kernels import backend_for, moe_mlp, reference, topk_gating

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MLPShape:
    name: str
    T: int
    D: int
    F: int
    E: int
    K: int


@dataclass(frozen=True)
class GateShape:
    name: str
    T: int
    E: int
    K: int


GPU_MLP_SHAPES = [MLPShape(f"{n}_T{T}", T, D, F, E, K) for T in (4096, 16384) for n, D, F, E, K in (
    ("llama_moe_16x688_top4", 4096, 688, 16, 4), ("8x1376_top2", 4096, 1376, 8, 2),
    ("mixtral_8x14336_top2", 4096, 14336, 8, 2))]
GPU_GATE_SHAPES = [GateShape("T8192_E16_k4", 8192, 16, 4), GateShape("T16384_E16_k4", 16384, 16, 4),
                   GateShape("T8192_E8_k2", 8192, 8, 2)]
SMOKE_MLP_SHAPES = [MLPShape("smoke_T64", 64, 32, 48, 4, 2)]
SMOKE_GATE_SHAPES = [GateShape("smoke_T64_E8_k2", 64, 8, 2)]


def time_fn(fn, device, warmup: int, iters: int) -> float:
    """Median wall time of fn() in microseconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return times[len(times) // 2]


def grouped_mm_mlp(x, weights, indices, w1, w3, w2):
    """Baseline: permute tokens by expert, three torch._grouped_mm, unpermute and combine over k."""
    T, D = x.shape
    K = indices.shape[1]
    E = w1.shape[0]
    order, counts = reference.sort_pairs_by_expert(indices, E)
    valid_sorted = indices.reshape(-1)[order]
    order = order[(valid_sorted >= 0) & (valid_sorted < E)]
    offs = torch.cumsum(counts, 0).to(torch.int32)
    xs = x[order // K]                                            # permute (extra read + write)
    h1 = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)
    h3 = torch._grouped_mm(xs, w3.transpose(-2, -1), offs=offs)
    o = torch._grouped_mm(F_.silu(h1) * h3, w2.transpose(-2, -1), offs=offs)
    y_P = torch.zeros(T * K, D, dtype=torch.float32, device=x.device)
    y_P[order] = o.float() * weights.reshape(-1)[order, None].float()  # unpermute
    return y_P.view(T, K, D).sum(1).to(x.dtype)


def eager_gating(logits, k):
    """Baseline: softmax + topk + renormalise + histogram in eager torch."""
    p = torch.softmax(logits.float(), dim=-1)
    w, idx = torch.topk(p, k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    counts = torch.histc(idx.float(), bins=logits.shape[1], min=0, max=logits.shape[1] - 1)
    return w, idx, counts


def _mlp_inputs(s: MLPShape, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(s.T, s.E, generator=g).to(device)
    w, idx, _ = topk_gating(logits, s.K)
    mk = lambda *shape, fan: (torch.randn(*shape, generator=g) / fan ** 0.5).to(device=device, dtype=dtype)
    x = mk(s.T, s.D, fan=1)
    return [x, w, idx, mk(s.E, s.F, s.D, fan=s.D), mk(s.E, s.F, s.D, fan=s.D), mk(s.E, s.D, s.F, fan=s.F)]


def _fwd_bwd(fn, inputs):
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]

    def run():
        for t in leaves:
            t.grad = None
        fn(*leaves).float().square().mean().backward()
    return run


def bench_mlp(s: MLPShape, device, dtype, warmup, iters):
    inputs = _mlp_inputs(s, device, dtype)
    fwd_flops = 6.0 * s.T * s.K * s.D * s.F
    impls = {"moe_kernels": moe_mlp, "grouped_mm": grouped_mm_mlp, "loop": reference.moe_mlp}
    row = {"shape": asdict(s), "dtype": str(dtype).replace("torch.", ""), "backend": backend_for(inputs[0])}
    for name, fn in impls.items():
        for mode, flops in (("fwd", fwd_flops), ("fwd_bwd", 3 * fwd_flops)):
            key = f"{name}_{mode}"
            try:
                with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                    run = (lambda fn=fn: fn(*inputs)) if mode == "fwd" else _fwd_bwd(fn, inputs)
                    us = time_fn(run, device, warmup, iters)
                row[key] = {"us": us, "tflops": flops / us / 1e6}
            except (RuntimeError, NotImplementedError) as exc:  # e.g. _grouped_mm limits on CPU
                row[key] = {"error": str(exc).splitlines()[0][:120]}
    for mode in ("fwd", "fwd_bwd"):
        ours = row[f"moe_kernels_{mode}"].get("us")
        for base in ("grouped_mm", "loop"):
            other = row[f"{base}_{mode}"].get("us")
            row[f"speedup_vs_{base}_{mode}"] = (other / ours) if (ours and other) else None
    return row


def bench_gating(s: GateShape, device, warmup, iters):
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(s.T, s.E, generator=g).to(device)
    nbytes = s.T * s.E * 4 + s.T * s.K * (4 + 8) + s.E * 8
    row = {"shape": asdict(s), "backend": backend_for(logits)}
    impls = (("moe_kernels", lambda: topk_gating(logits, s.K)), ("eager", lambda: eager_gating(logits, s.K)))
    for name, fn in impls:
        us = time_fn(fn, device, warmup, iters)
        row[name] = {"us": us, "gbps": nbytes / us / 1e3}
    row["speedup_vs_eager"] = row["eager"]["us"] / row["moe_kernels"]["us"]
    return row


def run_all(device: torch.device, smoke: bool, warmup: int, iters: int, dtype=torch.bfloat16):
    mlp_shapes = SMOKE_MLP_SHAPES if smoke else GPU_MLP_SHAPES
    gate_shapes = SMOKE_GATE_SHAPES if smoke else GPU_GATE_SHAPES
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
               "smoke": smoke, "mlp": [], "gating": []}
    for s in mlp_shapes:
        log.info("expert MLP %s", s.name)
        results["mlp"].append(bench_mlp(s, device, dtype, warmup, iters))
    for s in gate_shapes:
        log.info("gating %s", s.name)
        results["gating"].append(bench_gating(s, device, warmup, iters))
    from moe_kernels._launch import autotune_choices
    results["autotuned"] = autotune_choices()  # configs picked on this GPU (empty on CPU)
    return results


def _fmt(cell, key):
    if cell is None or "error" in cell:
        return "n/a"
    return f"{cell['us']:.1f}us/{cell[key]:.1f}"


def format_table(results) -> str:
    lines = [f"device: {results['device']}  date: {results['date']}  torch {results['torch']}",
             "expert MLP (us / TFLOPS; speedup = baseline time / moe_kernels time)",
             f"{'shape':34s} {'mode':8s} {'moe_kernels':>18s} {'grouped_mm':>18s} {'loop':>18s} {'x gmm':>6s} {'x loop':>6s}"]
    for r in results["mlp"]:
        for mode in ("fwd", "fwd_bwd"):
            sp = [r[f"speedup_vs_{b}_{mode}"] for b in ("grouped_mm", "loop")]
            lines.append(f"{r['shape']['name']:34s} {mode:8s} " + " ".join(
                f"{_fmt(r[f'{n}_{mode}'], 'tflops'):>18s}" for n in ("moe_kernels", "grouped_mm", "loop")) + " " +
                " ".join(f"{x:6.2f}" if x else f"{'n/a':>6s}" for x in sp))
    lines.append("gating (us / GB/s)")
    for r in results["gating"]:
        lines.append(f"{r['shape']['name']:34s} {_fmt(r['moe_kernels'], 'gbps'):>18s} {_fmt(r['eager'], 'gbps'):>18s}"
                     f" x eager {r['speedup_vs_eager']:.2f}")
    return "\n".join(lines)
