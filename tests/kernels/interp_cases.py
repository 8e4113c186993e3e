"""Triton kernels in the CPU interpreter vs the torch twins (outputs and all gradients).

Not collected by a plain `pytest` run (the file name does not match test_*.py): test_kernels_interpreter.py
runs it in a child pytest with TRITON_INTERPRET=1 set before anything imports triton, because triton.jit
picks the interpreter at decoration time and other test directories must keep the plain twins.
Run by hand:  TRITON_INTERPRET=1 python -m pytest -q tests/kernels/interp_cases.py
"""
import os

import pytest
import torch

import moe_kernels
from moe_kernels import reference as ref
from kernel_cases import CASES, CASE_IDS, assert_close, grads_of, make_logits, make_mlp_inputs

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or not moe_kernels.INTERPRET,
                                reason="needs TRITON_INTERPRET=1 before import")

# (rtol, atol as a fraction of max|reference|) per input dtype; fp16 is compared with an fp32 twin run on
# the same fp16-rounded inputs, so its tolerance covers fp16 storage of h and the output.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-2, 1e-2), torch.bfloat16: (5e-2, 3e-2)}


def _interp_mlp(*a):
    assert moe_kernels.backend_for(a[0]) == "interpreter"
    return moe_kernels.moe_mlp(*a)


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_gating_interpreter_matches_twin(c):
    logits, bias = make_logits(c)
    g = torch.Generator().manual_seed(5)
    pw, pp = torch.randn(c.T, c.K, generator=g), torch.randn(c.E, generator=g)
    res = []
    for fn in (moe_kernels.topk_gating, ref.topk_gating):
        lg = logits.clone().requires_grad_()
        w, idx, cnt, ps = fn(lg, c.K, c.score, bias, c.scale, return_probs_sum=True)
        ((w * pw).sum() + (ps * pp).sum()).backward()
        res.append((w.detach(), idx, cnt, ps.detach(), lg.grad))
    (w, idx, cnt, ps, dl), (rw, ridx, rcnt, rps, rdl) = res
    assert idx.dtype == torch.int64 and cnt.dtype == torch.int64 and w.dtype == torch.float32
    assert torch.equal(idx, ridx), f"indices differ:\n{idx}\n{ridx}"
    assert torch.equal(cnt, rcnt)
    assert_close(w, rw, 1e-5, 1e-6, "weights")
    assert_close(ps, rps, 1e-5, 1e-6, "probs_sum")
    assert_close(dl, rdl, 1e-5, 1e-6, "d logits")


def test_gating_fp16_logits_and_weights_only_grad():
    c = CASES[5]
    logits, _ = make_logits(c, dtype=torch.float16)
    outs = []
    for fn in (moe_kernels.topk_gating, ref.topk_gating):
        lg = logits.clone().requires_grad_()
        w, idx, _ = fn(lg, c.K)
        w.square().sum().backward()
        outs.append((w.detach(), idx, lg.grad))
    assert torch.equal(outs[0][1], outs[1][1])
    assert_close(outs[0][0], outs[1][0], 1e-5, 1e-6, "weights")
    assert outs[0][2].dtype == torch.float16
    assert_close(outs[0][2], outs[1][2], 1e-3, 1e-3, "d logits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_moe_mlp_interpreter_matches_twin(c, dtype):
    inputs = make_mlp_inputs(c, dtype=dtype)
    y, grads = grads_of(_interp_mlp, inputs)
    up = [t.float() if t.is_floating_point() else t for t in inputs]
    ry, rgrads = grads_of(ref.moe_mlp, up)
    rtol, atol = TOL[dtype]
    assert y.dtype == dtype
    assert_close(y, ry, rtol, atol, "y")
    for name, g, rg in zip(["dx", "dweights", "dw1", "dw3", "dw2"], grads, rgrads, strict=True):
        assert g.dtype == (torch.float32 if name == "dweights" else dtype), name
        assert_close(g, rg, rtol, atol, name)
    if c.empty_expert:  # explicit zeros, not garbage, for the expert without tokens
        for g in (grads[2], grads[3], grads[4]):
            assert torch.equal(g[1], torch.zeros_like(g[1]))


def test_moe_mlp_bf16_upcast_path():
    """bf16 runs through the fp32-upcast dot in the interpreter (its native bf16 dot is wrong)."""
    c = CASES[8]
    inputs = make_mlp_inputs(c, dtype=torch.bfloat16)
    y, grads = grads_of(_interp_mlp, inputs)
    ry, rgrads = grads_of(ref.moe_mlp, [t.float() if t.is_floating_point() else t for t in inputs])
    rtol, atol = TOL[torch.bfloat16]
    assert_close(y, ry, rtol, atol, "y")
    for g, rg in zip(grads, rgrads, strict=True):
        assert_close(g, rg, rtol, atol, "grad")


def test_canary_padding_is_never_read():
    """Inputs sit inside NaN-filled storage: an unmasked out-of-bounds load would turn outputs NaN."""
    c = CASES[8]  # odd D and F
    x, w, idx, w1, w3, w2 = make_mlp_inputs(c)

    def fenced(t):
        buf = torch.full((t.numel() + 64,), float("nan"))
        buf[32:32 + t.numel()] = t.reshape(-1)
        return buf[32:32 + t.numel()].view(t.shape)

    xs, w1s, w3s, w2s = (fenced(t) for t in (x, w1, w3, w2))
    y = moe_kernels.moe_mlp(xs, w, idx, w1s, w3s, w2s)
    assert torch.isfinite(y).all()
    assert_close(y, ref.moe_mlp(x, w, idx, w1, w3, w2), 1e-5, 1e-5, "y")


def test_moe_mlp_deterministic_in_interpreter():
    c = CASES[5]
    inputs = make_mlp_inputs(c)
    a = grads_of(_interp_mlp, inputs)
    b = grads_of(_interp_mlp, inputs)
    assert torch.equal(a[0], b[0]) and all(torch.equal(u, v) for u, v in zip(a[1], b[1], strict=True))


def _gemm_cfg(n, k):
    import triton
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=4, num_stages=1)]


# Tile shapes other than the default interpreter config (the launcher runs the first config of each list):
# wide dh tiles take the split-epilogue paths (2 or 4 column sub-tiles); the dh lists also hold a narrower
# BLOCK_N, so the d(weight) partials buffer has more slots than the running config writes tiles, and the
# slots it does not cover must be zeroed by the kernel (the buffer is torch.empty).
VARIANTS = {
    "dh_quarters": dict(dh=[(128, 16), (16, 16)], up=[(32, 32)], down=[(32, 16)], dx=[(16, 32)], bm=16),
    "dh_halves_bm32": dict(dh=[(64, 32), (16, 16)], up=[(64, 16)], down=[(64, 32)], dx=[(32, 16)], bm=32),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("c", [CASES[5], CASES[8], CASES[9]], ids=["k4_e8", "odd_dims", "other_rank"])
def test_moe_mlp_other_tile_shapes_match_twin(c, variant, monkeypatch):
    from moe_kernels import _configs

    v = VARIANTS[variant]
    lists = {name: _gemm_cfg(*v[name][0]) for name in ("up", "down", "dx")}
    lists["dh"] = _gemm_cfg(*v["dh"][0]) + _gemm_cfg(*v["dh"][1])
    default = _configs.configs
    monkeypatch.setattr(_configs, "configs", lambda kind, *a: lists[kind] if kind in lists else default(kind, *a))
    monkeypatch.setattr(_configs, "pick_block_m", lambda *a: v["bm"])
    inputs = make_mlp_inputs(c)
    y, grads = grads_of(_interp_mlp, inputs)
    ry, rgrads = grads_of(ref.moe_mlp, inputs)
    assert_close(y, ry, 1e-5, 1e-5, "y")
    for name, g, rg in zip(["dx", "dweights", "dw1", "dw3", "dw2"], grads, rgrads, strict=True):
        assert_close(g, rg, 1e-5, 1e-5, name)
