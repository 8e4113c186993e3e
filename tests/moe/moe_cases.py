"""Shared helpers of the MoE tests: cases, layout-independent weights, one forward+backward per layout."""
from __future__ import annotations

import zlib

import torch

from megatron_moe.config import ModelConfig, MoEConfig, ParallelConfig
from megatron_moe.model.sharding import sharding_table

MODEL = ModelConfig(hidden_size=16, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=32)
B_GLOBAL, S, D = 2, 8, 16


def cases() -> list[dict]:
    """(name, MoEConfig kwargs, seq len). Every router, k in {1, 2, 4}; one tiny case where experts get 0 tokens."""
    out = []
    for k in (1, 2, 4):
        out.append((f"noisy-linear-k{k}", dict(router="noisy_topk", top_k=k), S))
        out.append((f"softmax-k{k}", dict(router="softmax_topk", top_k=k, z_loss_coeff=1e-2), S))
        out.append((f"sigmoid-k{k}", dict(router="sigmoid", top_k=k, num_shared_experts=1), S))
    out.append(("noisy-mlp-k2-shared", dict(router="noisy_topk", top_k=2, gate_network="mlp", num_shared_experts=2,
                                            shared_expert_scale=0.5, z_loss_coeff=1e-2), S))
    out.append(("switch-jitter", dict(router="switch", top_k=1, switch_jitter=0.1), S))
    out.append(("switch-zero-tokens", dict(router="switch", top_k=1), 2))  # 2 tokens/rank, 8 experts
    return out


def moe_config(kw: dict) -> MoEConfig:
    base = dict(num_experts=8, aux_loss_coeff=0.1)
    base.update(kw)
    return MoEConfig(**base)


def _gen(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 7919 + zlib.crc32(name.encode()))


@torch.no_grad()
def fill(layer, seed: int = 5) -> None:
    """Every parameter cut from a canonical global tensor (random routers too, so routing is not all ties)."""
    table = sharding_table(layer)
    for name, p in layer.named_parameters():
        std = 0.5 if "router" in name else 0.15
        full = torch.randn(table[name].global_shape(p.shape), generator=_gen(seed, name)) * std
        p.copy_(table[name].local_slice(full))
    if hasattr(layer.router, "expert_bias"):
        layer.router.expert_bias.copy_(torch.randn(8, generator=_gen(seed, "bias")) * 0.1)


def inputs(seq: int):
    g = torch.Generator().manual_seed(11)
    # loss weights 0.1: keeps gradients O(1), so 1e-5 absolute is a meaningful fp32 tolerance
    return torch.randn(B_GLOBAL, seq, D, generator=g), 0.1 * torch.randn(B_GLOBAL, seq, D, generator=g)


def local_part(t: torch.Tensor, ps) -> torch.Tensor:
    """This rank's rows (DP) and, under SP, its sequence chunk."""
    B = t.shape[0] // ps.dp_size
    t = t[ps.dp_rank * B:(ps.dp_rank + 1) * B]
    if ps.sp:
        t = t.chunk(ps.tp_size, dim=1)[ps.tp_rank]
    return t.contiguous()


def run_layer(layer, x_BSD: torch.Tensor, r_BSD: torch.Tensor, lm_scale: float = 1.0):
    """Forward + backward of sum(y * r) * lm_scale; aux/z losses at the trainer's scale for one micro-batch."""
    layer.train()
    layer.set_loss_scale(1.0)
    x = x_BSD.clone().requires_grad_(True)
    torch.manual_seed(1234)  # noise key: same global RNG state on every rank and in the reference
    y = layer(x)
    ((y * r_BSD).sum() * lm_scale).backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for n, p in layer.named_parameters()}
    return y.detach(), x.grad.detach(), grads


def reference(name_kw_seq):
    from megatron_moe.model.moe import MoELayer
    from megatron_moe.parallel import ParallelState

    name, kw, seq = name_kw_seq
    layer = MoELayer(MODEL, moe_config(kw), ParallelState(), layer_idx=3)
    fill(layer)
    x, r = inputs(seq)
    y, dx, grads = run_layer(layer, x, r)
    return {"y": y, "dx": dx, "grads": grads, "tokens": layer.last_stats["tokens_per_expert"],
            "aux": layer.last_stats["aux_loss"], "z": layer.last_stats["z_loss"]}


def layout_worker(rank: int, world: int, layouts: list, case_list: list):
    """For each parallel layout and case: outputs, input grads and parameter grads after the trainer's own
    gradient sync (training/grads.py: SP all-reduce over TP, mean over DP / EDP)."""
    from megatron_moe.model.moe import MoELayer
    from megatron_moe.parallel import init_parallel
    from megatron_moe.training.grads import sync_grads, zero_missing_grads

    results = []
    for par in layouts:
        ps = init_parallel(ParallelConfig(**par))
        for name, kw, seq in case_list:
            layer = MoELayer(MODEL, moe_config(kw), ps, layer_idx=3)
            fill(layer)
            x, r = inputs(seq)
            # the reference sums the loss over all tokens; each DP rank's share times dp, then sync's mean over DP
            y, dx, _ = run_layer(layer, local_part(x, ps), local_part(r, ps), lm_scale=ps.dp_size)
            zero_missing_grads(layer.parameters())
            sync_grads(layer, ps)
            grads = {n: p.grad.detach().clone() for n, p in layer.named_parameters()}
            splits = {n: [(s.axis, s.dim, s.size, s.rank) for s in spec.splits]
                      for n, spec in sharding_table(layer).items()}
            results.append({"layout": par, "case": name, "y": y, "dx": dx / ps.dp_size, "grads": grads,
                            "splits": splits, "tokens": layer.last_stats["tokens_per_expert"],
                            "aux": layer.last_stats["aux_loss"], "z": layer.last_stats["z_loss"],
                            "ps": {"dp": ps.dp_size, "dp_rank": ps.dp_rank, "tp": ps.tp_size,
                                   "tp_rank": ps.tp_rank, "sp": ps.sp}})
    return results
