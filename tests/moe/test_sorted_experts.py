"""The torch path's expert computation (sorted_mlp.py, issue #26) against straightforward references written here:
outputs and every gradient for several shapes, experts with zero rows included; the whole layer against a plain
Mixtral-style layer; autocast; frozen weights; and the bytes saved for backward."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megatron_moe.config import ModelConfig, MoEConfig
from megatron_moe.model.moe import MoELayer
from megatron_moe.model.moe.experts import Experts
from megatron_moe.model.moe.sorted_mlp import sorted_swiglu
from megatron_moe.parallel import ParallelState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not installed
from benchmarks.moe_layer import saved_bytes  # noqa: E402  (the benchmark's memory figure, one copy)


def reference_rows(x_RD, w1, w3, w2, counts, x_grad=True, w_grad=True, leaves=None, r_R=None):
    """What the torch path computed before issue #26: plain autograd ops, one expert at a time, each expert's
    weights its own leaf tensors (or the given `leaves`), then each row times its routing weight r_R (a leaf;
    None: no weighting), as combine did. Returns (y, x leaf, [[w1 leaves], [w3], [w2]])."""
    x = x_RD.detach().clone().requires_grad_(x_grad)
    if leaves is None:
        leaves = [[w[i].detach().clone().requires_grad_(w_grad) for i in range(w.shape[0])] for w in (w1, w3, w2)]
    outs, start = [], 0
    for i, n in enumerate(counts):
        x_n = x[start:start + n]
        outs.append((F.silu(x_n @ leaves[0][i].t()) * (x_n @ leaves[1][i].t())) @ leaves[2][i].t())
        start += n
    y = torch.cat(outs)
    return (y if r_R is None else y * r_R[:, None]), x, leaves


def grads_of(leaves):
    return [torch.stack([t.grad if t.grad is not None else torch.zeros_like(t) for t in ws]) for ws in leaves]


def experts_with(E, F_, D, seed, dtype=torch.float32):
    ex = Experts(D, F_, E, ParallelState()).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ex.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    return ex


SHAPES = [  # (E, F, D, counts per expert)
    (4, 8, 16, [3, 0, 5, 2]),                 # an empty expert in the middle
    (8, 12, 20, [0, 0, 7, 1, 0, 9, 0, 0]),    # mostly empty, odd sizes
    (3, 16, 8, [0, 0, 11]),                   # every row at the last expert
    (16, 24, 32, [5, 9, 0, 13, 2, 1, 0, 8, 6, 4, 0, 7, 3, 10, 12, 1]),
    (2, 5, 7, [1, 1]),
]


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("E,F_,D,counts", SHAPES)
def test_sorted_rows_match_reference(E, F_, D, counts, dtype, tol, weighted):
    ex = experts_with(E, F_, D, seed=E * 100 + D, dtype=dtype)
    R = sum(counts)
    gen = torch.Generator().manual_seed(R)
    x = torch.randn(R, D, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    g = torch.randn(R, D, generator=gen, dtype=torch.float64).to(dtype)
    r = torch.rand(R, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if weighted else None
    y = ex.sorted_rows(x, r, counts)
    (y * g).sum().backward()
    r_ref = r.detach().to(dtype).requires_grad_() if weighted else None
    y_ref, x_ref, leaves = reference_rows(x, ex.w1, ex.w3, ex.w2, counts, r_R=r_ref)
    (y_ref * g).sum().backward()
    got = [y, x.grad, ex.w1.grad, ex.w3.grad, ex.w2.grad]
    want = [y_ref, x_ref.grad] + grads_of(leaves)
    if weighted:
        got.append(r.grad)
        want.append(r_ref.grad)
    for name, a, b in zip(["y", "dx", "dw1", "dw3", "dw2", "dr"], got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        scale = b.abs().max().item()
        assert scale > 0, name
        err = (a - b).abs().max().item()
        assert err <= tol * scale, (name, err, scale)
    for i, n in enumerate(counts):  # experts without rows: gradients exactly zero
        if n == 0:
            for w in (ex.w1, ex.w3, ex.w2):
                assert torch.equal(w.grad[i], torch.zeros_like(w.grad[i]))


def test_cpu_forward_in_weight_blocks_matches_whole_matmuls():
    """F and D of ≥ 2 blocks (W_BLOCK rows), with a ragged last block: fp64 outputs and gradients against the
    reference; fp32 outputs against whole-weight matmuls in the order the forward uses (same sums, other blocks)."""
    from megatron_moe.model.moe.sorted_mlp import W_BLOCK

    E, F_, D, counts = 3, 2 * W_BLOCK + 76, 2 * W_BLOCK + 6, [3, 0, 2]
    test_sorted_rows_match_reference(E, F_, D, counts, torch.float64, 1e-12, weighted=True)
    ex = experts_with(E, F_, D, seed=7)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(sum(counts), D, generator=gen)
    r = torch.rand(sum(counts), generator=gen)
    with torch.no_grad():
        y = ex.sorted_rows(x, r, counts)
        want, start = [], 0
        for i, n in enumerate(counts):
            x_n = x[start:start + n]
            h = F.silu(torch.mm(x_n, ex.w1[i].t())) * torch.mm(x_n, ex.w3[i].t()) * r[start:start + n, None]
            want.append(torch.mm(h, ex.w2[i].t()))
            start += n
    want = torch.cat(want)
    assert (y - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_grads_accumulate_and_frozen_weights_get_none():
    """A second backward adds to .grad like any parameter; a frozen weight and an input that needs no gradient
    get none, and the others are unchanged."""
    E, F_, D, counts = 4, 8, 16, [3, 0, 5, 2]
    ex = experts_with(E, F_, D, seed=3)
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(4))
    ex.sorted_rows(x, None, counts).square().sum().backward()
    ex.sorted_rows(x, None, counts).square().sum().backward()
    y_ref, x_ref, leaves = reference_rows(x, ex.w1, ex.w3, ex.w2, counts)
    y_ref.square().sum().backward()
    for w, ref in zip((ex.w1, ex.w3, ex.w2), grads_of(leaves)):
        torch.testing.assert_close(w.grad, 2 * ref, rtol=1e-6, atol=1e-6)
    ex.zero_grad(set_to_none=True)
    ex.w3.requires_grad_(False)
    ex.sorted_rows(x, None, counts).square().sum().backward()
    assert ex.w3.grad is None
    torch.testing.assert_close(ex.w1.grad, grads_of(leaves)[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ex.w2.grad, grads_of(leaves)[2], rtol=1e-6, atol=1e-6)


def test_counts_must_cover_the_rows():
    ex = experts_with(2, 4, 8, seed=1)
    with pytest.raises(ValueError, match="do not match 5 rows"):
        sorted_swiglu(torch.randn(5, 8), ex.w1, ex.w3, ex.w2, [2, 2])


def test_autocast_bf16_matches_the_autograd_loop():
    """Under CPU bf16 autocast the matmuls run in bf16 as autocast runs the plain loop's: same outputs and weight
    gradients, bit for bit."""
    E, F_, D, counts = 4, 16, 32, [6, 0, 9, 5]
    ex = experts_with(E, F_, D, seed=7)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(8)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ex.sorted_rows(x, None, counts)
        y_ref, x_ref, leaves = reference_rows(x, ex.w1, ex.w3, ex.w2, counts)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    y.float().square().sum().backward()
    y_ref.float().square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip([ex.w1.grad, ex.w3.grad, ex.w2.grad], grads_of(leaves)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # dx = dh1 @ w1 + dh3 @ w3: one bf16 addmm here, two bf16 matmuls and a bf16 add in the loop (<= 1 bf16 ulp)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=2**-8 * x_ref.grad.abs().max().item())


def test_autocast_bf16_weighted_rows_match_the_loop_weighted_after():
    """Routing weights applied before the down projection (ours) or to its output (the loop, as combine did):
    the same function, within bf16 rounding; the weights' gradient comes back in their own dtype (fp32)."""
    E, F_, D, counts = 4, 16, 32, [6, 0, 9, 5]
    ex = experts_with(E, F_, D, seed=9)
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(20, D, generator=gen).requires_grad_()
    r = torch.rand(20, generator=gen).requires_grad_()
    r_ref = r.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ex.sorted_rows(x, r, counts)
        y_ref, x_ref, leaves = reference_rows(x, ex.w1, ex.w3, ex.w2, counts, r_R=r_ref.to(torch.bfloat16))
    y.float().square().sum().backward()
    y_ref.float().square().sum().backward()
    assert r.grad.dtype == torch.float32
    for a, b in zip([y, x.grad, r.grad, ex.w1.grad, ex.w3.grad, ex.w2.grad],
                    [y_ref, x_ref.grad, r_ref.grad] + grads_of(leaves)):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2**-6 * b.abs().max().item())




@pytest.mark.parametrize("x_grad,w_grad", [(True, True), (False, True), (True, False)])
def test_saved_for_backward_is_x_h1_h3(x_grad, w_grad):
    """Exactly h1 and h3 [R, F], and x [R, D] when a weight needs its gradient; the autograd loop kept silu(h1)
    and the product as well. The gradients that are asked for are right whichever inputs need them."""
    E, F_, D, counts = 4, 8, 16, [3, 0, 5, 2]
    R = sum(counts)
    ex = experts_with(E, F_, D, seed=2)
    ex.requires_grad_(w_grad)
    x = torch.randn(R, D, generator=torch.Generator().manual_seed(6)).requires_grad_(x_grad)
    ours = saved_bytes(lambda: ex.sorted_rows(x, None, counts), ex.parameters())
    assert ours == 4 * (R * D * w_grad + 2 * R * F_)
    leaves = [[w[i].detach().clone().requires_grad_(w_grad) for i in range(E)] for w in (ex.w1, ex.w3, ex.w2)]
    loop = saved_bytes(lambda: reference_rows(x, ex.w1, ex.w3, ex.w2, counts, x_grad, w_grad, leaves),
                       [t for ws in leaves for t in ws])
    assert ours < loop
    ex.sorted_rows(x, None, counts).square().sum().backward()
    y_ref, x_ref, _ = reference_rows(x, ex.w1, ex.w3, ex.w2, counts, x_grad, w_grad, leaves)
    y_ref.square().sum().backward()
    assert (x.grad is not None) == x_grad
    if x_grad:
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    for w, ref in zip((ex.w1, ex.w3, ex.w2), grads_of(leaves)):
        assert (w.grad is None) == (not w_grad)
        if w_grad:
            torch.testing.assert_close(w.grad, ref, rtol=1e-6, atol=1e-6)


def mixtral_reference(x_TD, gate_ED, w1, w3, w2, k):
    """A plain Mixtral block (softmax over E, top-k, renormalised; loop over experts by token mask)."""
    p_TE = torch.softmax(x_TD @ gate_ED.t(), dim=-1)
    p_TK, idx_TK = p_TE.topk(k, dim=-1)
    w_TK = p_TK / p_TK.sum(-1, keepdim=True)
    y = torch.zeros_like(x_TD)
    for e in range(w1.shape[0]):
        tok, slot = torch.where(idx_TK == e)
        if tok.numel():
            h = F.silu(x_TD[tok] @ w1[e].t()) * (x_TD[tok] @ w3[e].t())
            y = y.index_add(0, tok, (h @ w2[e].t()) * w_TK[tok, slot, None])
    return y


@pytest.mark.parametrize("E,k,T", [(8, 2, 3), (4, 1, 6), (16, 4, 40)])  # T=3: most experts get no token
def test_layer_matches_plain_mixtral_block(E, k, T):
    D, F_ = 24, 12
    model = ModelConfig(hidden_size=D, intermediate_size=F_ * E, num_layers=1, num_heads=1, vocab_size=8)
    moe = MoEConfig(num_experts=E, top_k=k, expert_ffn_size=F_, router="softmax_topk", score_scale=1.0,
                    aux_loss_coeff=0.0, use_kernels="off")
    layer = MoELayer(model, moe, ParallelState(), 0).train()
    g = torch.Generator().manual_seed(E + T)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(1, T, D, generator=g, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    assert layer.last_stats["tokens_per_expert"].eq(0).any() or T > 3
    leaves = [t.detach().clone().requires_grad_() for t in
              (x, layer.router.gate.weight, layer.experts.w1, layer.experts.w3, layer.experts.w2)]
    y_ref = mixtral_reference(leaves[0][0], *leaves[1:], k)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y[0], y_ref, rtol=1e-6, atol=1e-6)
    got = [x.grad, layer.router.gate.weight.grad, layer.experts.w1.grad, layer.experts.w3.grad, layer.experts.w2.grad]
    for a, b in zip(got, [t.grad for t in leaves]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
