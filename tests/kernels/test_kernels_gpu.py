"""CUDA-only kernel tests: real sizes in bf16 against an fp32 twin, determinism, no host sync, sanitizer.

Tolerances (documented in kernels/README.md): bf16 kernel vs fp32 twin on the same bf16-rounded inputs,
elementwise |got - want| <= 2e-2 * max|want| + 2e-2 * |want| for y and every gradient; gating in fp32
matches to 1e-5 with identical indices (selection without bias is on the logits themselves).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import moe_kernels
from moe_kernels import reference as ref
from kernel_cases import CASES, CASE_IDS, Case, assert_close, grads_of, make_logits, make_mlp_inputs

pytestmark = pytest.mark.gpu
BF16_TOL = (2e-2, 2e-2)


def _real(c: Case) -> Case:
    """The CPU case scaled to real sizes (odd T, F = 688 unless the case asks for odd dims)."""
    D, F = (4096, 688) if c.name in ("k4_e8", "ties") else ((1023, 689) if c.name == "odd_dims" else (1024, 688))
    T = 1 if c.T == 1 else 2048 + 2 * c.T + 1
    return Case(c.name, T, D, F, c.E, c.K, c.score, c.bias, c.empty_expert, c.other_rank, c.ties, c.scale)


def _cuda(ts, dtype=None):
    return [t.cuda().to(dtype) if (dtype is not None and t.is_floating_point() and i != 1) else t.cuda()
            for i, t in enumerate(ts)]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_gating_cuda_matches_twin(c):
    c = _real(c)
    logits, bias = make_logits(c)
    logits, bias = logits.cuda(), (bias.cuda() if bias is not None else None)
    out = moe_kernels.topk_gating(logits, c.K, c.score, bias, c.scale, return_probs_sum=True)
    want = ref.topk_gating(logits, c.K, c.score, bias, c.scale, return_probs_sum=True)
    same = (out[1] == want[1]).all(1)
    # with a bias, selection compares p + bias; an ulp of difference in p may flip a near-tie
    assert same.float().mean() >= (1.0 if bias is None else 0.999)
    assert_close(out[0][same], want[0][same], 1e-5, 1e-6, "weights")
    assert_close(out[3], want[3], 1e-4, 1e-5, "probs_sum")


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_moe_mlp_bf16_vs_fp32_twin(c):
    c = _real(c)
    inputs = _cuda(make_mlp_inputs(c), torch.bfloat16)
    y, grads = grads_of(moe_kernels.moe_mlp, inputs)
    ry, rgrads = grads_of(ref.moe_mlp, [t.float() if t.is_floating_point() else t for t in inputs])
    assert_close(y, ry, *BF16_TOL, "y")
    for name, g, rg in zip(["dx", "dweights", "dw1", "dw3", "dw2"], grads, rgrads, strict=True):
        assert_close(g, rg, *BF16_TOL, name)
    if c.empty_expert:
        assert all(torch.equal(g[1], torch.zeros_like(g[1])) for g in grads[2:])


def test_moe_mlp_fp16_and_fp32():
    c = _real(CASES[8])
    for dtype, tol in ((torch.float16, (1e-2, 1e-2)), (torch.float32, (1e-4, 1e-4))):
        inputs = _cuda(make_mlp_inputs(c), dtype)
        y, grads = grads_of(moe_kernels.moe_mlp, inputs)
        ry, rgrads = grads_of(ref.moe_mlp, [t.float() if t.is_floating_point() else t for t in inputs])
        assert_close(y, ry, *tol, f"y {dtype}")
        for g, rg in zip(grads, rgrads, strict=True):
            assert_close(g, rg, *tol, f"grad {dtype}")


def test_bitwise_deterministic():
    c = Case("det", 4097, 4096, 688, 16, 4)
    inputs = _cuda(make_mlp_inputs(c), torch.bfloat16)
    a = grads_of(moe_kernels.moe_mlp, inputs)
    b = grads_of(moe_kernels.moe_mlp, inputs)
    assert torch.equal(a[0], b[0])
    assert all(torch.equal(u, v) for u, v in zip(a[1], b[1], strict=True))
    logits = make_logits(c)[0].cuda().requires_grad_()
    r1 = moe_kernels.topk_gating(logits, 4, return_probs_sum=True)
    r2 = moe_kernels.topk_gating(logits, 4, return_probs_sum=True)
    assert all(torch.equal(u, v) for u, v in zip(r1, r2, strict=True))


def test_no_host_sync_after_warmup():
    c = Case("sync", 1031, 512, 688, 8, 2)
    x, w, idx, w1, w3, w2 = _cuda(make_mlp_inputs(c), torch.bfloat16)
    logits = make_logits(c)[0].cuda()
    moe_kernels.topk_gating(logits, 2)
    moe_kernels.moe_mlp(x, w, idx, w1, w3, w2)  # autotuning (which syncs) happens here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moe_kernels.topk_gating(logits, 2)
        moe_kernels.moe_mlp(x, w, idx, w1, w3, w2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


_SANITIZE_SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
import moe_kernels
from kernel_cases import Case, grads_of, make_mlp_inputs, make_logits
c = Case("san", 301, 256, 688, 5, 2, empty_expert=True, other_rank=True)
ins = [t.cuda() for t in make_mlp_inputs(c)]
ins = [t.bfloat16() if t.is_floating_point() and i != 1 else t for i, t in enumerate(ins)]
grads_of(moe_kernels.moe_mlp, ins)
lg = make_logits(c)[0].cuda().requires_grad_()
w, i, n, ps = moe_kernels.topk_gating(lg, 2, return_probs_sum=True)
(w.sum() + ps.sum()).backward()
torch.cuda.synchronize()
print("done")
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer not installed")
def test_compute_sanitizer_clean():
    here = str(Path(__file__).resolve().parent)
    cmd = ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3",
           sys.executable, "-c", _SANITIZE_SCRIPT.format(here=here)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "done" in out, out[-4000:]
    assert "ERROR SUMMARY: 0 errors" in out, out[-4000:]
