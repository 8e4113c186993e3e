"""MoE layer forward+backward benchmark against transformers' MixtralSparseMoeBlock (same config and weights,
same inputs, measured in the same run). Driven by tools/benchmark_moe_layer.py.

Our layer runs as a Mixtral router (softmax_topk, score scale 1, aux and z losses off: the HF block computes none)
so both compute the same function; the benchmark checks that first. Memory: peak allocated bytes on CUDA; on
CPU, the bytes saved for backward (activation memory), counted with saved-tensor hooks.

It also reports a *floor*: the expert matmuls' FLOPs (forward 3 GEMMs of 2·T·K·D·F, backward twice that) divided
by this machine's GEMM rate, measured in the same run on one square matmul of the same dtype. Any layer that
runs those matmuls needs at least that long, so Mixtral time / floor bounds the speed-up over Mixtral of such a
layer (routing, SwiGLU and token movement come on top).
"""
from __future__ import annotations

import statistics
import time

import torch

from megatron_moe.config import ModelConfig, MoEConfig
from megatron_moe.parallel import ParallelState


def build_pair(hidden: int, ffn: int, experts: int, top_k: int, device: torch.device, dtype: torch.dtype,
               use_kernels: str = "auto", seed: int = 0):
    """(our MoELayer, HF MixtralSparseMoeBlock) with identical weights."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from megatron_moe.model.moe import MoELayer

    model = ModelConfig(hidden_size=hidden, intermediate_size=ffn * experts, num_layers=1, num_heads=1)
    moe = MoEConfig(num_experts=experts, top_k=top_k, expert_ffn_size=ffn, router="softmax_topk", score_scale=1.0,
                    aux_loss_coeff=0.0, z_loss_coeff=0.0, use_kernels=use_kernels)
    ours = MoELayer(model, moe, ParallelState(), 0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    hf_cfg = MixtralConfig(hidden_size=hidden, intermediate_size=ffn, num_local_experts=experts,
                           num_experts_per_tok=top_k, router_jitter_noise=0.0)
    hf = MixtralSparseMoeBlock(hf_cfg)
    with torch.no_grad():
        hf.gate.weight.copy_(ours.router.gate.weight)
        hf.experts.gate_up_proj.copy_(torch.cat([ours.experts.w1, ours.experts.w3], dim=1))
        hf.experts.down_proj.copy_(ours.experts.w2)
    return ours.to(device=device, dtype=dtype), hf.to(device=device, dtype=dtype)


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int = 1024, iters: int = 5) -> float:
    """FLOP/s of an n x n x n matmul on this machine now (the best of `iters` timed runs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def expert_flops(tokens: int, top_k: int, hidden: int, ffn: int) -> float:
    """Forward + backward FLOPs of the expert SwiGLU matmuls: 3 GEMMs of 2*T*K*D*F forward, twice that backward."""
    return 3 * 3 * 2.0 * tokens * top_k * hidden * ffn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(module, x):
    y = module(x)
    y = y[0] if isinstance(y, tuple) else y
    y.float().square().mean().backward()
    return y


def _saved_bytes(module, x) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
        y = y[0] if isinstance(y, tuple) else y
    del y
    return total[0]


def _memory(module, x) -> dict:
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
        _step(module, x)
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(x.device)}
    return {"saved_for_backward_bytes": _saved_bytes(module, x)}


def measure_interleaved(modules: dict, x, warmup: int, iters: int) -> dict:
    """Median fwd+bwd time of each module, timed in alternation (A B A B ...) so that a machine whose speed
    drifts (shared CPUs, turbo, thermal) biases neither side."""
    device = x.device
    for _ in range(warmup):
        for m in modules.values():
            _step(m, x)
    times = {name: [] for name in modules}
    for _ in range(iters):
        for name, m in modules.items():
            m.zero_grad(set_to_none=True)
            _sync(device)
            t0 = time.perf_counter()
            _step(m, x)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, m in modules.items():
        med = statistics.median(times[name])
        out[name] = {"median_s": med, "tokens_per_s": x.shape[0] * x.shape[1] / med, **_memory(m, x)}
    return out


def run_benchmark(hidden=128, ffn=256, experts=8, top_k=2, batch=4, seq=512, device=None, dtype=torch.float32,
                  warmup=3, iters=10, use_kernels="auto") -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ours, hf = build_pair(hidden, ffn, experts, top_k, device, dtype, use_kernels)
    ours.train()
    hf.train()
    x = torch.randn(batch, seq, hidden, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    with torch.no_grad():
        diff = (ours(x) - hf(x)).abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    if not diff <= tol:  # NaN fails
        raise RuntimeError(f"our layer and MixtralSparseMoeBlock disagree: max |diff| = {diff:.3g} > {tol}")
    res = measure_interleaved({"ours": ours, "mixtral_hf": hf}, x, warmup, iters)
    res_ours, res_hf = res["ours"], res["mixtral_hf"]
    rate = gemm_rate(device, dtype)
    floor_s = expert_flops(batch * seq, top_k, hidden, ffn) / rate
    return {"config": dict(hidden=hidden, ffn=ffn, experts=experts, top_k=top_k, batch=batch, seq=seq,
                           dtype=str(dtype).replace("torch.", ""), device=str(device),
                           threads=torch.get_num_threads(), use_kernels=use_kernels),
            "max_abs_diff": diff, "ours": res_ours, "mixtral_hf": res_hf,
            "floor": {"median_s": floor_s, "gemm_flops_per_s": rate},
            "speedup": res_hf["median_s"] / res_ours["median_s"],
            "max_possible_speedup": res_hf["median_s"] / floor_s}
