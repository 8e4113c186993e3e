"""MoE layer forward+backward benchmark against transformers' MixtralSparseMoeBlock (same config and weights,
same inputs, measured in the same run). Used by tools/benchmark_moe_layer.py.

Our layer runs as a Mixtral router (softmax_topk, score scale 1, aux and z losses off: the HF block computes none)
so both compute the same function; the benchmark checks that first. Memory: peak allocated bytes on CUDA; on
CPU, the bytes saved for backward (activation memory), counted with saved-tensor hooks.

It also times the *floor*: the expert matmuls and SwiGLU alone on perfectly balanced, pre-sorted rows (no routing,
no token movement). Both layers must do that work, so Mixtral time / floor bounds the speed-up over Mixtral of
any layer that runs the same matmuls.
"""
from __future__ import annotations

import statistics
import time

import torch

from ...config import ModelConfig, MoEConfig
from ...parallel import ParallelState


def build_pair(hidden: int, ffn: int, experts: int, top_k: int, device: torch.device, dtype: torch.dtype,
               use_kernels: str = "auto", seed: int = 0):
    """(our MoELayer, HF MixtralSparseMoeBlock) with identical weights."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from .layer import MoELayer

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


class ExpertFloor(torch.nn.Module):
    """Only the expert compute of a layer: each expert's SwiGLU MLP on T*K/E rows of a fixed input."""

    def __init__(self, layer, top_k: int):
        super().__init__()
        self.experts, self.k = layer.experts, top_k

    def forward(self, x_BSD):
        x_RD = x_BSD.reshape(-1, x_BSD.shape[-1]).repeat(self.k, 1)
        e = self.experts.num_local
        return self.experts.sorted_rows(x_RD, [x_RD.shape[0] // e] * e)


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
    if diff > tol:
        raise RuntimeError(f"our layer and MixtralSparseMoeBlock disagree: max |diff| = {diff:.3g} > {tol}")
    res = measure_interleaved({"ours": ours, "mixtral_hf": hf, "floor": ExpertFloor(ours, top_k)}, x, warmup, iters)
    res_ours, res_hf = res["ours"], res["mixtral_hf"]
    return {"config": dict(hidden=hidden, ffn=ffn, experts=experts, top_k=top_k, batch=batch, seq=seq,
                           dtype=str(dtype).replace("torch.", ""), device=str(device),
                           threads=torch.get_num_threads(), use_kernels=use_kernels),
            "max_abs_diff": diff, "ours": res_ours, "mixtral_hf": res_hf, "floor": res["floor"],
            "speedup": res_hf["median_s"] / res_ours["median_s"],
            "max_possible_speedup": res_hf["median_s"] / res["floor"]["median_s"]}
