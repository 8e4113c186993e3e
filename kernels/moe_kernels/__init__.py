"""Fused MoE kernels (importable as `moe_kernels`): top-k gating and the grouped SwiGLU expert MLP.

    weights, indices, tokens_per_expert = topk_gating(logits, k, score_function="softmax", bias=None, scale=1.0)
    weights, indices, tokens_per_expert, probs_sum = topk_gating(..., return_probs_sum=True)
    y = moe_mlp(x, weights, indices, w1, w3, w2)

Dispatch: CUDA tensors run the Triton kernels; CPU tensors run the Triton kernels in Triton's
interpreter when TRITON_INTERPRET=1 was set before this package was imported, and the pure-torch twins
of `moe_kernels.reference` otherwise (also whenever Triton is not installed). See kernels/README.md.
`python -m moe_kernels.aot` compiles every launch for sm_90a / sm_80 on a CPU and reports its resources.
"""
from __future__ import annotations

import logging
import os

import torch

from . import reference

__all__ = ["topk_gating", "moe_mlp", "reference", "backend_for", "INTERPRET"]

log = logging.getLogger(__name__)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read once, like triton.jit does

try:  # Triton ships Linux wheels only; without it everything runs on the twins.
    from .gating import topk_gating_triton as _gating_triton
    from .moe_mlp import moe_mlp_triton as _mlp_triton
    from ._launch import is_recording as _is_recording
    HAVE_TRITON = True
except ImportError as exc:  # pragma: no cover - depends on the platform
    log.info("moe_kernels: Triton unavailable (%s); using the torch twins", exc)
    HAVE_TRITON = False


def backend_for(t: torch.Tensor) -> str:
    """'triton', 'interpreter' or 'reference': which implementation runs for a tensor on t's device."""
    if not HAVE_TRITON:
        return "reference"
    if t.is_cuda or (t.device.type == "meta" and _is_recording()):  # meta: moe_kernels.aot records launches
        return "triton"
    if INTERPRET and t.device.type == "cpu":
        return "interpreter"
    return "reference"


def topk_gating(logits, k, score_function="softmax", bias=None, scale=1.0, return_probs_sum=False):
    """Top-k router over logits [T, E] (math in fp32).

    Returns weights [T, k] fp32 (differentiable w.r.t. logits), indices [T, k] int64 (descending
    selection score, ties to the lower expert index) and tokens_per_expert [E] int64. With
    return_probs_sum=True also returns probs_sum [E] fp32 = sum over tokens of the router probabilities
    (full softmax; or sigmoid scores normalised over E), differentiable w.r.t. logits, for balance losses.
    score_function: "softmax" (softmax over the selected k) or "sigmoid" (renormalised over k when k > 1).
    bias [E] is added to the scores only to choose experts; scale multiplies the returned weights.
    """
    backend = backend_for(logits)
    if backend == "reference":
        return reference.topk_gating(logits, k, score_function, bias, scale, return_probs_sum)
    return _gating_triton(logits, k, score_function, bias, scale, return_probs_sum)


def moe_mlp(x, weights, indices, w1, w3, w2):
    """y[t] = sum_j weights[t, j] * w2[e] @ (silu(w1[e] @ x[t]) * (w3[e] @ x[t])),  e = indices[t, j].

    x [T, D]; weights [T, k]; indices [T, k] (outside [0, E) contributes nothing: other-rank experts);
    w1, w3 [E, F, D]; w2 [E, D, F]. Differentiable w.r.t. x, weights, w1, w3, w2. Returns [T, D] in x's dtype.
    """
    backend = backend_for(x)
    if backend == "reference":
        return reference.moe_mlp(x, weights, indices, w1, w3, w2)
    return _mlp_triton(x, weights, indices, w1, w3, w2, interpret=backend == "interpreter")
