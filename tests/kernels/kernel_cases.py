"""Shared case matrix, input builders and an independent naive per-token implementation for kernel tests.

Shape legend: T tokens, D hidden, F expert FFN, E experts, K top-k.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F_


@dataclass(frozen=True)
class Case:
    name: str
    T: int
    D: int
    F: int
    E: int
    K: int
    score: str = "softmax"
    bias: bool = False
    empty_expert: bool = False   # force expert 1 to receive no token
    other_rank: bool = False     # mark some indices as experts on other ranks (outside [0, E))
    ties: bool = False           # logits with exact ties
    scale: float = 1.0


# k in {1, 2, 4} x E in {1, 3, 8} (k <= E), plus the special cases of the issue.
CASES = [
    Case("k1_e1", 5, 16, 24, 1, 1),
    Case("k1_e3", 9, 16, 24, 3, 1),
    Case("k2_e3", 9, 16, 24, 3, 2),
    Case("k1_e8", 12, 16, 32, 8, 1),
    Case("k2_e8", 12, 16, 32, 8, 2),
    Case("k4_e8", 13, 16, 32, 8, 4, scale=2.5),
    Case("empty_expert", 10, 16, 24, 3, 2, empty_expert=True),
    Case("t1", 1, 16, 24, 8, 4),
    Case("odd_dims", 7, 19, 43, 3, 2),
    Case("other_rank", 11, 16, 24, 8, 2, other_rank=True),
    Case("ties", 8, 16, 24, 8, 4, ties=True),
    Case("sigmoid_bias", 9, 16, 24, 8, 4, score="sigmoid", bias=True, scale=1.5),
    Case("sigmoid_k1", 6, 16, 24, 3, 1, score="sigmoid"),
    Case("softmax_bias", 9, 16, 24, 8, 2, bias=True),
]
CASE_IDS = [c.name for c in CASES]


def make_logits(c: Case, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if c.ties:
        # few distinct values per row: many exact ties, including at the k-th place
        logits = torch.randint(0, 3, (c.T, c.E), generator=g).float() * 0.5
    else:
        logits = torch.randn(c.T, c.E, generator=g)
    if c.empty_expert and c.E > 1:
        logits[:, 1] = -30.0
    bias = (torch.randn(c.E, generator=g) * 0.3) if c.bias else None
    return logits.to(dtype), bias


def make_mlp_inputs(c: Case, seed: int = 0, dtype=torch.float32):
    """x, weights, indices, w1, w3, w2 (indices from the reference gating of make_logits)."""
    from moe_kernels import reference as ref

    g = torch.Generator().manual_seed(seed + 1)
    logits, bias = make_logits(c, seed)
    w, idx, _ = ref.topk_gating(logits, c.K, c.score, bias, c.scale)
    if c.other_rank:
        idx = idx.clone()
        idx[::2, -1] = c.E + 3   # beyond this rank's experts
        idx[1::3, 0] = -1        # negative ids too
    x = torch.randn(c.T, c.D, generator=g)
    w1 = torch.randn(c.E, c.F, c.D, generator=g) / c.D ** 0.5
    w3 = torch.randn(c.E, c.F, c.D, generator=g) / c.D ** 0.5
    w2 = torch.randn(c.E, c.D, c.F, generator=g) / c.F ** 0.5
    return [x.to(dtype), w.detach().float(), idx, w1.to(dtype), w3.to(dtype), w2.to(dtype)]


# ------------------------------------------------------------------ independent naive implementations
def naive_gating(logits, k, score, bias, scale):
    """Per-token Python loop with plain differentiable torch ops in float64 (autograd gives the gradients)."""
    T, E = logits.shape
    ws, idxs, counts, psum = [], [], [0] * E, 0
    for t in range(T):
        lt = logits[t].double()  # float64 ground truth (the callers pass float64 logits; this keeps them so)
        s = torch.softmax(lt, 0) if score == "softmax" else torch.sigmoid(lt)
        if bias is None:
            sel = (lt if score == "softmax" else s).tolist()
        else:
            sel = (s + bias.double()).tolist()
        chosen = sorted(range(E), key=lambda e: (-sel[e], e))[:k]
        v = s[chosen]
        if score == "softmax" or k > 1:
            v = v / v.sum()
        ws.append(v * scale)
        idxs.append(chosen)
        for e in chosen:
            counts[e] += 1
        psum = psum + (s if score == "softmax" else s / s.sum())
    return torch.stack(ws), torch.tensor(idxs, dtype=torch.int64), torch.tensor(counts), psum


def naive_moe_mlp(x, weights, indices, w1, w3, w2):
    """y[t] = sum_j weights[t, j] * w2[e] @ (silu(w1[e] @ x[t]) * (w3[e] @ x[t])), one token at a time."""
    T, K = indices.shape
    E = w1.shape[0]
    rows = []
    for t in range(T):
        acc = torch.zeros_like(x[t])
        for j in range(K):
            e = int(indices[t, j])
            if 0 <= e < E:
                acc = acc + weights[t, j].to(x.dtype) * (w2[e] @ (F_.silu(w1[e] @ x[t]) * (w3[e] @ x[t])))
        rows.append(acc)
    return torch.stack(rows)


def grads_of(fn, inputs, probe_seed=123):
    """Output and gradients of <fn(*inputs), fixed random probe> for every floating input."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(probe_seed)
    probe = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.dtype)
    (out * probe).sum().backward()
    return out.detach(), [t.grad for t in leaves if t.is_floating_point()]


def assert_close(got, want, rtol, atol_frac, what):
    """|got - want| <= atol_frac * max|want| + rtol * |want|, elementwise, with a readable message."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    atol = atol_frac * max(want.abs().max().item(), 1e-12)
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    assert not bad.any(), f"{what}: max abs err {err.max().item():.3e} (atol {atol:.3e}), {int(bad.sum())} bad"
