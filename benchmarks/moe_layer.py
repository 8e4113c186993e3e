"""MoE layer forward+backward benchmark, driven by tools/benchmark_moe_layer.py. Measured in one process, timings
alternating in a rotating order (A B C, B C A, C A B, ...) so that a machine whose speed drifts (shared CPUs, turbo,
thermal) biases no side:

  ours        our MoELayer as a Mixtral router (softmax_topk, score scale 1, aux and z losses off)
  loop        the baseline written here: a plain loop over experts, each expert its own three `nn.Linear`
              (how LLaMA-MoE v1's layer is written: sort the (token, slot) pairs by expert, split, one expert
              module per chunk, cat, weight, index_add). It shares the weight storage of ours (separate
              parameters and gradients), so the largest shapes fit in memory once.
  mixtral_hf  transformers' MixtralSparseMoeBlock with the same weights (optional: slow at large shapes)
  floor       the expert matmuls' FLOPs (forward 3 GEMMs of 2·T·K·D·F, backward twice that) at this machine's
              GEMM rate, measured in the alternation on as many 1024³ matmuls as the layer has FLOPs. Any layer
              that runs those matmuls needs at least that long; routing, SwiGLU and token movement come on top.

All layers are checked to compute the same function first. Memory: peak allocated bytes on CUDA; on CPU, the
activation memory: the distinct storages saved for backward (parameters excluded), counted with saved-tensor hooks.
"""
from __future__ import annotations

import resource
import statistics
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron_moe.config import ModelConfig, MoEConfig
from megatron_moe.parallel import ParallelState

GEMM_N = 1024


class LoopExpert(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x_nD):
        return self.down_proj(F.silu(self.gate_proj(x_nD)) * self.up_proj(x_nD))


class LoopMoE(nn.Module):
    """The baseline: Mixtral routing, then one expert module per expert over its sorted chunk of rows."""

    def __init__(self, hidden: int, ffn: int, experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(LoopExpert(hidden, ffn) for _ in range(experts))

    def forward(self, x_BSD):
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        p_TE = torch.softmax(self.gate(x_TD), dim=-1)
        p_TK, idx_TK = p_TE.topk(self.top_k, dim=-1)
        w_TK = p_TK / p_TK.sum(-1, keepdim=True)
        e_P = idx_TK.reshape(-1)
        order_P = torch.argsort(e_P, stable=True)
        counts = torch.bincount(e_P, minlength=len(self.experts)).tolist()
        tok_P = order_P // self.top_k
        chunks = x_TD[tok_P].split(counts)
        out_PD = torch.cat([self.experts[e](x_nD) for e, x_nD in enumerate(chunks) if x_nD.shape[0]])
        out_PD = out_PD * w_TK.reshape(-1)[order_P, None]
        return torch.zeros_like(x_TD).index_add(0, tok_P, out_PD).view_as(x_BSD)


def build_ours(hidden: int, ffn: int, experts: int, top_k: int, device, dtype, use_kernels="auto", seed=0):
    from megatron_moe.model.moe import MoELayer

    model = ModelConfig(hidden_size=hidden, intermediate_size=ffn * experts, num_layers=1, num_heads=1)
    moe = MoEConfig(num_experts=experts, top_k=top_k, expert_ffn_size=ffn, router="softmax_topk", score_scale=1.0,
                    aux_loss_coeff=0.0, z_loss_coeff=0.0, use_kernels=use_kernels)
    ours = MoELayer(model, moe, ParallelState(), 0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return ours.to(device=device, dtype=dtype)


def build_loop(ours) -> LoopMoE:
    """The loop baseline over the weight storage of `ours` (its own parameters, gradients and modules)."""
    E, F_, D = ours.experts.w1.shape
    loop = LoopMoE(D, F_, E, ours.router.k).to(ours.experts.w1.device)
    loop.gate.weight = nn.Parameter(ours.router.gate.weight.detach())
    for e, ex in enumerate(loop.experts):
        ex.gate_proj.weight = nn.Parameter(ours.experts.w1.detach()[e])
        ex.up_proj.weight = nn.Parameter(ours.experts.w3.detach()[e])
        ex.down_proj.weight = nn.Parameter(ours.experts.w2.detach()[e])
    return loop


def build_mixtral(ours):
    """transformers' MixtralSparseMoeBlock with the weights of `ours`."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    E, F_, D = ours.experts.w1.shape
    w = ours.experts.w1
    cfg = MixtralConfig(hidden_size=D, intermediate_size=F_, num_local_experts=E, num_experts_per_tok=ours.router.k,
                        router_jitter_noise=0.0)
    hf = MixtralSparseMoeBlock(cfg).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        hf.gate.weight.copy_(ours.router.gate.weight)
        hf.experts.gate_up_proj.copy_(torch.cat([ours.experts.w1, ours.experts.w3], dim=1))
        hf.experts.down_proj.copy_(ours.experts.w2)
    return hf


def expert_flops(tokens: int, top_k: int, hidden: int, ffn: int) -> float:
    """Forward + backward FLOPs of the expert SwiGLU matmuls: 3 GEMMs of 2*T*K*D*F forward, twice that backward."""
    return 3 * 3 * 2.0 * tokens * top_k * hidden * ffn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _output(module, x):
    y = module(x)
    return y[0] if isinstance(y, tuple) else y


def layer_step(module, x):
    """One forward + backward; the gradients are dropped afterwards (outside the timing) to free their memory."""
    def step():
        module.zero_grad(set_to_none=True)
        _output(module, x).float().square().mean().backward()

    def after():
        module.zero_grad(set_to_none=True)
    return step, after


def gemm_step(device, dtype, n_mm: int):
    a = torch.randn(GEMM_N, GEMM_N, device=device, dtype=dtype)
    b = torch.randn(GEMM_N, GEMM_N, device=device, dtype=dtype)
    c = torch.empty(GEMM_N, GEMM_N, device=device, dtype=dtype)

    def step():
        for _ in range(n_mm):
            torch.mm(a, b, out=c)
    return step, lambda: None


def saved_bytes(fn, params) -> int:
    """Activation memory of fn(): bytes of the distinct storages its graph keeps for backward, the storages of
    `params` excluded (they live anyway; a view of a weight saved per expert costs nothing)."""
    own = {p.untyped_storage().data_ptr() for p in params}
    kept = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            kept[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values())


def _saved_bytes(module, x) -> int:
    """saved_bytes of one forward of `module` on x, its parameters excluded."""
    return saved_bytes(lambda: _output(module, x), list(module.parameters()))


def _memory(module, x) -> dict:
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
        step, after = layer_step(module, x)
        step()
        after()
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(x.device)}
    return {"saved_for_backward_bytes": _saved_bytes(module, x)}


def _thread_usage() -> tuple:
    """(user seconds, system seconds, minor page faults) of this thread so far (Linux)."""
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return ru.ru_utime, ru.ru_stime, ru.ru_minflt


def measure_interleaved(steps: dict, device, warmup: int, iters: int, clock=time.perf_counter,
                        usage: Optional[dict] = None) -> dict:
    """Times of each (step, after) pair, timed in alternation with `clock`, the order rotated every iteration
    (A B C, B C A, C A B, ...: on a VM, memory one step frees and the next allocates costs the next one less, so a
    fixed order favours whoever follows a big step); returns {name: [seconds, ...]}.
    usage (a dict, filled): {name: [(user s, system s, minor page faults), ...]} of this thread per step, which
    splits a one-thread CPU time into the layer's own work and the kernel's (fresh memory is faulted in page by
    page and zeroed: at large widths that is most of a backward that writes new weight gradients)."""
    for _ in range(warmup):
        for step, after in steps.values():
            step()
            after()
    times = {name: [] for name in steps}
    names = list(steps)
    for i in range(iters):
        for name in names[i % len(names):] + names[:i % len(names)]:  # rotated: no step always follows the same one
            step, after = steps[name]
            _sync(device)
            u0 = _thread_usage() if usage is not None else None
            t0 = clock()
            step()
            _sync(device)
            times[name].append(clock() - t0)
            if usage is not None:
                usage.setdefault(name, []).append(tuple(b - a for a, b in zip(u0, _thread_usage())))
            after()
    return times


def run_benchmark(hidden=128, ffn=256, experts=8, top_k=2, batch=4, seq=512, device=None, dtype=torch.float32,
                  warmup=3, iters=10, use_kernels="auto", mixtral=True, cpu_time=False) -> dict:
    """cpu_time: time with this thread's CPU time instead of the wall clock (CPU, one torch thread only: then
    every op and the backward run on this thread, and the time spent waiting for a busy core is not counted)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cpu_time and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("CPU time needs device cpu and 1 torch thread (other threads' work would not be counted)")
    ours = build_ours(hidden, ffn, experts, top_k, device, dtype, use_kernels).train()
    modules = {"ours": ours, "loop": build_loop(ours).train()}
    if mixtral:
        modules["mixtral_hf"] = build_mixtral(ours).train()
    x = torch.randn(batch, seq, hidden, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    diffs = {}
    with torch.no_grad():
        y = ours(x)
        # relative to the output's scale: fp32 sums over wide experts (Mixtral's 14336) differ by order alone
        tol = (1e-4 if dtype == torch.float32 else 3e-2) * max(1.0, y.abs().max().item())
        for name in list(modules)[1:]:
            diffs[name] = (_output(modules[name], x) - y).abs().max().item()
            if not diffs[name] <= tol:  # NaN fails
                raise RuntimeError(f"our layer and {name} disagree: max |diff| = {diffs[name]:.3g} > {tol}")
        del y
    flops = expert_flops(batch * seq, top_k, hidden, ffn)
    n_mm = max(1, round(flops / (2.0 * GEMM_N**3)))
    steps = {name: layer_step(m, x) for name, m in modules.items()}
    steps["floor"] = gemm_step(device, dtype, n_mm)
    usage = {} if cpu_time else None
    times = measure_interleaved(steps, device, warmup, iters, time.thread_time if cpu_time else time.perf_counter,
                                usage)
    res = {}
    for name, m in modules.items():
        med = statistics.median(times[name])
        res[name] = {"median_s": med, "tokens_per_s": batch * seq / med, **_memory(m, x)}
        if usage is not None:
            res[name].update({key: statistics.median(u[j] for u in usage[name])
                              for j, key in enumerate(("user_s", "system_s", "minor_faults"))})
    rate = n_mm * 2.0 * GEMM_N**3 / statistics.median(times["floor"])
    floor_s = flops / rate
    out = {"config": dict(hidden=hidden, ffn=ffn, experts=experts, top_k=top_k, batch=batch, seq=seq,
                          dtype=str(dtype).replace("torch.", ""), device=str(device),
                          threads=torch.get_num_threads(), use_kernels=use_kernels,
                          clock="thread CPU time" if cpu_time else "wall"),
           "max_abs_diff": max(diffs.values()), "max_abs_diff_by_baseline": diffs, **res,
           "floor": {"median_s": floor_s, "gemm_flops_per_s": rate, "gemm_calls": n_mm},
           "vs_loop": res["loop"]["median_s"] / res["ours"]["median_s"],
           "ours_over_floor": res["ours"]["median_s"] / floor_s,
           "vs_loop_per_iteration_median": statistics.median(
               lo / us for lo, us in zip(times["loop"], times["ours"])),
           "loop_over_floor": res["loop"]["median_s"] / floor_s}
    if mixtral:
        out["speedup"] = res["mixtral_hf"]["median_s"] / res["ours"]["median_s"]
        out["max_possible_speedup"] = res["mixtral_hf"]["median_s"] / floor_s
    return out
