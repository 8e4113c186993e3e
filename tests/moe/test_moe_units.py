"""Single-process MoE checks: hand-computed aux/z losses, the lossless FFN partition, expert-bias balancing,
capacity dropping, the kernel switch."""
import math

import pytest
import torch

from megatron_moe.config import ModelConfig, MoEConfig
from megatron_moe.model.moe import MoELayer, apply_capacity
from megatron_moe.parallel import ParallelState


def layer_for(D=4, F=8, **kw):
    model = ModelConfig(hidden_size=D, intermediate_size=F, num_layers=1, num_heads=1, vocab_size=8)
    return MoELayer(model, MoEConfig(**kw), ParallelState(), layer_idx=0)


def identity_gate(layer):
    with torch.no_grad():
        layer.router.gate.weight.copy_(torch.eye(layer.router.E))
        for p in layer.experts.parameters():
            p.normal_(0, 0.1)


X = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 1.5, -0.5, 0.0], [0.0, 0.0, 3.0, 1.0], [1.0, -2.0, 0.2, 0.4],
                  [0.3, 0.2, 0.1, 2.5]])


def cv2(v):
    m = sum(v) / len(v)
    var = sum((a - m) ** 2 for a in v) / (len(v) - 1)
    return var / (m * m + 1e-10)


def topk_py(row, k):
    return sorted(range(len(row)), key=lambda i: -row[i])[:k]


def test_noisy_topk_balance_loss_without_noise_by_hand():
    layer = layer_for(num_experts=4, top_k=2, router="noisy_topk", noisy_gate=False)
    identity_gate(layer)
    layer.train()
    layer(X[None])
    imp, load = [0.0] * 4, [0.0] * 4
    for row in X.tolist():
        sel = topk_py(row, 2)
        ex = [math.exp(row[i]) for i in sel]
        for i, e in zip(sel, ex, strict=True):
            imp[i] += e / sum(ex)
            load[i] += 1
    assert abs(layer.last_stats["aux_loss"].item() - (cv2(imp) + cv2(load))) < 1e-5
    assert layer.last_stats["tokens_per_expert"].tolist() == load


def test_noisy_topk_smooth_load_with_given_noise_by_hand():
    layer = layer_for(num_experts=4, top_k=2, router="noisy_topk")
    identity_gate(layer)
    with torch.no_grad():
        layer.router.noise.weight.copy_(0.3 * torch.eye(4))
    eps = torch.tensor([[0.5, -1.0, 0.2, 0.1], [1.0, 0.3, -0.2, 0.0], [-0.5, 0.9, 0.1, 0.4],
                        [0.2, 0.2, -1.5, 0.7], [0.0, 0.1, 0.3, -0.6]])
    routing = layer.router(X, eps)
    imp, load = [0.0] * 4, [0.0] * 4
    for x, e in zip(X.tolist(), eps.tolist(), strict=True):
        std = [math.log1p(math.exp(0.3 * v)) + 1e-2 for v in x]
        noisy = [c + n * s for c, n, s in zip(x, e, std, strict=True)]
        order = topk_py(noisy, 3)
        thr_in, thr_out = noisy[order[2]], noisy[order[1]]
        ex = [math.exp(noisy[i]) for i in order[:2]]
        for i, v in zip(order[:2], ex, strict=True):
            imp[i] += v / sum(ex)
        for i in range(4):
            thr = thr_in if noisy[i] > thr_in else thr_out
            load[i] += 0.5 * (1 + math.erf((x[i] - thr) / std[i] / math.sqrt(2)))
    assert torch.allclose(routing.sums["importance"], torch.tensor(imp), atol=1e-5)
    assert torch.allclose(routing.sums["load"], torch.tensor(load), atol=1e-5)
    aux, _ = layer.router.losses(routing.sums)
    assert abs(aux.item() - (cv2(imp) + cv2(load))) < 1e-5
    # weights: softmax over the selected noisy logits, times s = E / k = 2
    assert torch.allclose(routing.weights_TK.sum(-1), torch.full((5,), 2.0), atol=1e-6)


@pytest.mark.parametrize("router,k", [("softmax_topk", 2), ("switch", 1), ("sigmoid", 2)])
def test_switch_style_balance_and_z_loss_by_hand(router, k):
    layer = layer_for(num_experts=4, top_k=k, router=router, z_loss_coeff=1e-3)
    identity_gate(layer)
    layer.train()
    layer(X[None])
    T, E = len(X), 4
    P, f, z = [0.0] * E, [0.0] * E, 0.0
    for row in X.tolist():
        if router == "sigmoid":
            s = [1 / (1 + math.exp(-v)) for v in row]
            p = [v / sum(s) for v in s]
            sel = topk_py(s, k)
        else:
            ex = [math.exp(v) for v in row]
            p = [v / sum(ex) for v in ex]
            sel = topk_py(row, k)
        for i in range(E):
            P[i] += p[i] / T
        for i in sel:
            f[i] += 1 / (T * k)
        z += math.log(sum(math.exp(v) for v in row)) ** 2 / T
    want = E * sum(a * b for a, b in zip(f, P, strict=True))
    assert abs(layer.last_stats["aux_loss"].item() - want) < 1e-5
    assert abs(layer.last_stats["z_loss"].item() - z) < 1e-4


def _router_grad(layer, x):
    layer.zero_grad()
    layer(x).sum().backward()
    return layer.router.gate.weight.grad.double()


@pytest.mark.parametrize("router", ["softmax_topk", "noisy_topk"])
def test_aux_and_z_terms_change_the_router_gradient_by_their_formula(router):
    """grad_W[sum(y)] with the balance and z-loss coefficients on, minus the same with them off, equals
    d/dW (0.5·aux + 0.1·z) where aux and z are written here from their definitions (float64 autograd):
    softmax_topk: aux = E·Σ_i f_i·P_i, f_i = assignments to i / (T·K) (constant), P_i = mean softmax prob of i;
    noisy_topk (noise off): aux = cv²(importance) + cv²(load), importance_i = Σ_t of the top-k softmax weight on
    i, load = hard counts (constant); z = mean_t logsumexp(logits_t)²."""
    torch.manual_seed(0)
    on = layer_for(num_experts=4, top_k=2, router=router, noisy_gate=False, aux_loss_coeff=0.5, z_loss_coeff=0.1)
    off = layer_for(num_experts=4, top_k=2, router=router, noisy_gate=False, aux_loss_coeff=0.0, z_loss_coeff=0.0)
    with torch.no_grad():
        for p in on.parameters():
            p.normal_(0, 0.5)
    off.load_state_dict(on.state_dict())
    on.train()
    off.train()
    x = torch.randn(1, 6, 4)
    got = _router_grad(on, x) - _router_grad(off, x)

    W = on.router.gate.weight.detach().double().requires_grad_()
    logits = x[0].double() @ W.T
    T, E, K = 6, 4, 2
    top = logits.topk(K, dim=-1)
    if router == "softmax_topk":
        f = torch.zeros(E, dtype=torch.float64).index_add_(0, top.indices.reshape(-1), torch.ones(T * K,
                                                                                              dtype=torch.float64))
        aux = E * (f / (T * K) * torch.softmax(logits, -1).mean(0)).sum()
    else:
        importance = torch.zeros(E, dtype=torch.float64).index_add(0, top.indices.reshape(-1),
                                                                    torch.softmax(top.values, -1).reshape(-1))
        aux = importance.var() / importance.mean() ** 2  # cv²(load) of constant counts has no gradient
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    want = torch.autograd.grad(0.5 * aux + 0.1 * z, W)[0]
    assert want.abs().max() > 1e-2  # the terms do move the router gradient at this point
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got, want)


def test_force_all_experts_on_an_ffn_partition_is_lossless():
    torch.manual_seed(1)
    D, Fd, E, fe, fs = 8, 24, 4, 4, 8  # 4 routed experts of 4 neurons + one shared expert of 8 = 24 neurons
    w1, w3, w2 = torch.randn(Fd, D), torch.randn(Fd, D), torch.randn(D, Fd)
    dense = lambda x: (torch.nn.functional.silu(x @ w1.t()) * (x @ w3.t())) @ w2.t()  # noqa: E731
    perm = torch.randperm(Fd)
    layer = layer_for(D=D, F=Fd, num_experts=E, top_k=2, router="noisy_topk", expert_ffn_size=fe,
                      num_shared_experts=1, shared_expert_ffn_size=fs)
    with torch.no_grad():
        for j in range(E):
            s = perm[j * fe:(j + 1) * fe]
            layer.experts.w1[j] = w1[s]
            layer.experts.w3[j] = w3[s]
            layer.experts.w2[j] = w2[:, s]
        s = perm[E * fe:]
        layer.shared.w1.weight.copy_(w1[s])
        layer.shared.w3.weight.copy_(w3[s])
        layer.shared.w2.weight.copy_(w2[:, s])
    layer.force_all_experts = True
    layer.train()
    x = torch.randn(2, 5, D)
    assert torch.allclose(layer(x), dense(x), atol=1e-4, rtol=1e-5)
    layer.force_all_experts = False
    assert not torch.allclose(layer(x), dense(x), atol=1e-2)


def test_expert_bias_updates_move_load_towards_balance():
    torch.manual_seed(2)
    layer = layer_for(D=8, F=16, num_experts=4, top_k=1, router="sigmoid", bias_update_rate=0.05,
                      aux_loss_coeff=0.0)
    with torch.no_grad():
        layer.router.gate.weight.normal_(0, 0.1)
        layer.router.gate.weight[0] += 0.5  # expert 0 is everybody's favourite
    layer.train()
    x = torch.randn(1, 64, 8).abs()
    cvs = []
    for step in range(30):
        with torch.no_grad():
            layer(x)
        load = layer.last_stats["tokens_per_expert"].double()
        before = layer.router.expert_bias.clone()
        cvs.append(layer.last_stats["load_cv"].item())
        layer.update_expert_bias()
        want = before + 0.05 * torch.sign(load.mean() - load).float()
        assert torch.allclose(layer.router.expert_bias, want)
    # the sign update oscillates around balance once reached: compare the average of the last steps
    assert cvs[0] > 1.0 and sum(cvs[-10:]) / 10 < 0.5 * cvs[0], cvs


def test_capacity_keeps_highest_weights_per_expert():
    w = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    idx = torch.tensor([[0, 1], [0, 1], [0, 2]])
    assert apply_capacity(w, idx, 3, None) is idx
    assert apply_capacity(w, idx, 3, 0.5).tolist() == [[0, -1], [-1, 1], [-1, 2]]  # capacity ceil(0.5*6/3) = 1
    assert apply_capacity(w, idx, 3, 1.0).tolist() == [[0, 1], [0, 1], [-1, 2]]  # capacity 2


def test_capacity_dropped_assignments_contribute_nothing():
    torch.manual_seed(3)
    layer = layer_for(D=8, F=16, num_experts=4, top_k=2, router="softmax_topk", capacity_factor=0.5)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    layer.eval()
    x = torch.randn(1, 10, 8)
    y = layer(x)[0]
    r = layer.router(x[0])
    kept = apply_capacity(r.weights_TK, r.indices_TK, 4, 0.5)
    assert (kept < 0).sum() > 0 and layer.last_stats["dropped_frac"].item() > 0
    ex = layer.experts
    for t in range(10):
        want = torch.zeros(8)
        for j in range(2):
            e = int(kept[t, j])
            if e >= 0:
                h = torch.nn.functional.silu(ex.w1[e] @ x[0, t]) * (ex.w3[e] @ x[0, t])
                want += r.weights_TK[t, j] * (ex.w2[e] @ h)
        assert torch.allclose(y[t], want, atol=1e-5)


@pytest.fixture(scope="module")
def kernel_step(tmp_path_factory):
    """One training step per router with use_kernels="on": the Triton kernels in Triton's CPU interpreter, in a
    child process that sets TRITON_INTERPRET=1 before anything imports triton (tests/moe/_kernel_switch.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from _deps import require

    require("triton")
    out = tmp_path_factory.mktemp("kernels") / "on.pt"
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "_kernel_switch.py"), str(out), "on"],
                          env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("router", ["noisy_topk", "softmax_topk", "sigmoid"])
def test_kernel_path_trains_like_the_torch_path(kernel_step, router):
    """use_kernels="on" (Triton kernels, interpreted) and "off" (torch) in TRAINING mode give the same output and
    the same gradients of the input, the expert weights and the router weights, with the balance loss, the z-loss
    and (noisy_topk) the noisy gate on, the noise drawn by global sample as the trainer does."""
    from _kernel_switch import step

    assert kernel_step["backend"] == "interpreter"
    calls = kernel_step["calls"]
    assert calls.count("moe_mlp") == 3, calls  # every router's experts ran as Triton kernels
    assert calls.count("topk_gating") == 2, calls  # softmax_topk and sigmoid route with the gating kernel
    got, want = kernel_step["res"][router], step(router, "off")
    assert float(want["aux_loss"]) > 0 and float(want["z_loss"]) > 0
    assert float(got["aux_loss"]) == pytest.approx(float(want["aux_loss"]), rel=1e-5)
    assert torch.equal(got["tokens"], want["tokens"])
    assert torch.allclose(got["y"], want["y"], atol=1e-5), (got["y"] - want["y"]).abs().max()
    assert torch.allclose(got["dx"], want["dx"], atol=1e-5), (got["dx"] - want["dx"]).abs().max()
    names = {"router.gate.weight", "experts.w1", "experts.w3", "experts.w2"}
    if router == "noisy_topk":
        names.add("router.noise.weight")  # only the smooth load of the noisy gate reaches it
    assert set(want["grads"]) == set(got["grads"]) == names
    for name in sorted(names):
        g, w = got["grads"][name], want["grads"][name]
        assert w is not None and w.abs().max() > 0, name
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4), (name, (g - w).abs().max())


@pytest.mark.parametrize("router", ["noisy_topk", "softmax_topk", "sigmoid", "switch"])
def test_router_math_stays_fp32_under_bf16_autocast(router):
    from megatron_moe.model.moe.router import Router

    moe = MoEConfig(num_experts=8, top_k=1 if router == "switch" else 2, router=router, gate_network="mlp")
    r = Router(64, moe, sequence_parallel=False)
    with torch.no_grad():
        for p in r.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(257, 64, generator=torch.Generator().manual_seed(0))
    want = r(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = r(x)
    assert got.weights_TK.dtype == torch.float32
    assert torch.equal(got.indices_TK, want.indices_TK)
    assert torch.equal(got.weights_TK, want.weights_TK)


def test_max_violation_by_hand():
    from megatron_moe.model.moe.aux import max_violation

    assert float(max_violation(torch.tensor([4, 4, 4, 4]))) == 0.0
    assert float(max_violation(torch.tensor([8, 0, 0, 0]))) == 3.0   # 8 / 2 - 1
    assert float(max_violation(torch.tensor([6, 2, 2, 2]))) == 1.0   # 6 / 3 - 1
    assert float(max_violation(torch.tensor([0, 0]))) == 0.0


def test_global_balance_scope_equals_the_loss_of_the_whole_batch():
    """Two micro-batches in global scope: the logged loss is E * sum_i f_i P_i over all 8 tokens (computed here by
    hand from softmax(x W^T)), not the mean of the two per-micro-batch losses; and the summed surrogate gradients
    equal the gradient of that whole-batch loss."""
    torch.manual_seed(0)
    layer = layer_for(D=4, F=8, num_experts=4, top_k=1, router="softmax_topk", aux_loss_coeff=1.0, score_scale=1.0)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 1.0)
    layer.train()
    x = torch.randn(2, 4, 4)  # two micro-batches of one sequence of 4 tokens
    W = layer.router.gate.weight

    def whole_batch_loss(w):
        p = torch.softmax(x.reshape(8, 4) @ w.t(), -1)
        f = torch.bincount(p.argmax(-1), minlength=4).double() / 8
        return 4 * (f * p.double().mean(0)).sum()

    layer.balance.start_collect()
    with torch.no_grad():
        for m in range(2):
            layer(x[m:m + 1])
    layer.balance.finalize(layer.router.losses, 1.0, 0.0)
    assert abs(float(layer.balance.value) - float(whole_batch_loss(W.detach()))) < 1e-6
    micro = []
    for m in range(2):
        layer.set_loss_scale(0.5)
        layer(x[m:m + 1]).sum().mul(0).backward()  # only the balance term's gradient reaches the router
        micro.append(float(layer.last_stats["aux_loss"]))
    assert micro == [float(layer.balance.value)] * 2  # every micro-batch logs the whole-batch value
    want = torch.autograd.grad(whole_batch_loss(W), W)[0]
    assert torch.allclose(W.grad, want.float(), atol=1e-6)
