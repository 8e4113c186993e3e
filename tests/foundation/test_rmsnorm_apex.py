"""RMSNorm's apex path (README: "if apex is importable its fused RMSNorm is used automatically on CUDA").

apex is not on PyPI and this machine has no GPU, so a stand-in `apex` package goes into sys.modules and the input
is a tensor that reports itself as CUDA: the test exercises the selection (apex on CUDA in the weight's dtype,
PyTorch's math otherwise, and when apex is absent), not apex's kernel.
"""
import sys
import types

import pytest
import torch

from megatron_moe.model import layers
from megatron_moe.model.layers import RMSNorm


class _ReportsCuda(torch.Tensor):
    """A CPU tensor whose is_cuda says True (the only device question RMSNorm asks)."""

    @property
    def is_cuda(self):
        return True


def _by_hand(x, w, eps):
    x64 = x.double()
    return (w.double() * x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps)).to(x.dtype)


@pytest.fixture
def fake_apex(monkeypatch):
    """apex.normalization.fused_layer_norm.fused_rms_norm_affine that records its calls and returns a marker."""
    calls = []

    def fused_rms_norm_affine(x, weight, normalized_shape, eps):
        calls.append((x, weight, tuple(normalized_shape), eps))
        return torch.full(x.shape, 7.0, dtype=x.dtype)

    apex = types.ModuleType("apex")
    norm = types.ModuleType("apex.normalization")
    fln = types.ModuleType("apex.normalization.fused_layer_norm")
    fln.fused_rms_norm_affine = fused_rms_norm_affine
    apex.normalization, norm.fused_layer_norm = norm, fln
    for name, mod in (("apex", apex), ("apex.normalization", norm), ("apex.normalization.fused_layer_norm", fln)):
        monkeypatch.setitem(sys.modules, name, mod)
    layers.apex_rms_norm.cache_clear()
    yield calls
    layers.apex_rms_norm.cache_clear()


def _norm(dim=6, eps=1e-5):
    n = RMSNorm(dim, eps)
    with torch.no_grad():
        n.weight.copy_(torch.linspace(0.5, 2.0, dim))
    return n


def test_cuda_input_with_apex_runs_apexs_fused_rmsnorm(fake_apex):
    n = _norm()
    x = torch.randn(2, 3, 6).as_subclass(_ReportsCuda)
    y = n(x)
    assert len(fake_apex) == 1
    got_x, got_w, shape, eps = fake_apex[0]
    assert got_x is x and got_w is n.weight and shape == (6,) and eps == 1e-5
    assert torch.equal(y.as_subclass(torch.Tensor), torch.full((2, 3, 6), 7.0))


def test_apex_is_not_used_off_cuda_or_in_another_dtype(fake_apex):
    n = _norm()
    x = torch.randn(2, 3, 6)
    assert torch.allclose(n(x), _by_hand(x, n.weight.detach(), 1e-5), atol=1e-6)  # a CPU tensor
    xb = x.to(torch.bfloat16).as_subclass(_ReportsCuda)  # CUDA, but not the weight's dtype (fp32)
    yb = n(xb).as_subclass(torch.Tensor)
    assert yb.dtype == torch.float32
    want = n.weight.detach() * _by_hand(x.to(torch.bfloat16), torch.ones(6), 1e-5).float()
    assert torch.allclose(yb, want, atol=1e-6)
    assert fake_apex == []


def test_without_apex_cuda_input_falls_back_to_the_torch_math(monkeypatch):
    monkeypatch.setitem(sys.modules, "apex", None)  # `import apex` raises ImportError
    layers.apex_rms_norm.cache_clear()
    try:
        assert layers.apex_rms_norm() is None
        n = _norm()
        x = torch.randn(2, 3, 6)
        y = n(x.as_subclass(_ReportsCuda)).as_subclass(torch.Tensor)
        assert torch.allclose(y, _by_hand(x, n.weight.detach(), 1e-5), atol=1e-6)
    finally:
        layers.apex_rms_norm.cache_clear()
