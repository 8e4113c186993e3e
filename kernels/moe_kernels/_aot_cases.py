"""The launch scenarios moe_kernels.aot compiles, recorded through the public API on meta tensors.

This module does not import moe_kernels.aot (aot imports it): `python -m moe_kernels.aot` then loads aot once,
as __main__, instead of a second copy through a cycle.

Shape legend: T tokens, D hidden, F expert FFN, E experts, K top-k.
DEFAULT (CI, every run): every kernel and launch flag in bf16 at the real sizes (D 4096, F 688, E 16,
k 4, with T giving both row tiles, training and inference), the router's gating launches, and the fp32
launches most at risk of not fitting (dX and up). FULL (`slow`): F 688 / 1376 / 14336,
E 8 / 16, k 1 / 2 / 4, bf16 / fp16 / fp32, odd sizes (D 1023, F 689), a single token, every gating flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import moe_mlp, topk_gating
from ._launch import SM80, SM90, Launch, recording

TARGETS = {"sm90": SM90, "sm80": SM80}


@dataclass(frozen=True)
class MLPCase:
    name: str
    T: int
    D: int
    F: int
    E: int
    K: int
    dtype: torch.dtype = torch.bfloat16
    grad: bool = True
    keep: Optional[Callable[[Launch], bool]] = None  # only these launches (default: all)

    def run(self):
        def leaf(*shape, dtype=self.dtype):
            return torch.empty(*shape, dtype=dtype, device="meta", requires_grad=self.grad)
        x, w = leaf(self.T, self.D), leaf(self.T, self.K, dtype=torch.float32)
        idx = torch.empty(self.T, self.K, dtype=torch.int64, device="meta")
        y = moe_mlp(x, w, idx, leaf(self.E, self.F, self.D), leaf(self.E, self.F, self.D),
                    leaf(self.E, self.D, self.F))
        if self.grad:
            y.backward(torch.empty_like(y))


@dataclass(frozen=True)
class GateCase:
    name: str
    T: int
    E: int
    K: int
    score: str = "softmax"
    bias: bool = False
    psum: bool = True
    grad: bool = True
    keep: Optional[Callable[[Launch], bool]] = None

    def run(self):
        logits = torch.empty(self.T, self.E, device="meta", requires_grad=self.grad)
        bias = torch.empty(self.E, device="meta") if self.bias else None
        out = topk_gating(logits, self.K, self.score, bias, 1.0, return_probs_sum=self.psum)
        if self.grad:
            loss = out[0].sum() + (out[3].sum() if self.psum else 0.0)
            loss.backward()


def _risky_fp32(ln: Launch) -> bool:
    """fp32 launches nearest the limits: dX (two operand streams) and up (two accumulators)."""
    name = ln.kernel.fn.__name__
    return name == "up_kernel" or (name == "rowgemm_kernel" and ln.kwargs["TWO"])


_BF, _H, _F32 = torch.bfloat16, torch.float16, torch.float32
DEFAULT = [
    MLPCase("16x688_k4_T16384", 16384, 4096, 688, 16, 4),
    MLPCase("16x688_k4_T2048", 2048, 4096, 688, 16, 4),
    MLPCase("16x688_k4_T16384_infer", 16384, 4096, 688, 16, 4, grad=False),
    MLPCase("16x688_k4_T2048_infer", 2048, 4096, 688, 16, 4, grad=False),
    MLPCase("fp32_16x688_k4_T16384", 16384, 4096, 688, 16, 4, _F32, keep=_risky_fp32),
    MLPCase("fp32_odd_3x689_k2_T2063", 2063, 1023, 689, 3, 2, _F32, keep=_risky_fp32),
    GateCase("gate_T8192_E16_k4", 8192, 16, 4),
    GateCase("gate_T8192_E16_k4_sigmoid_bias", 8192, 16, 4, "sigmoid", bias=True),
    GateCase("gate_T8192_E8_k2_nopsum", 8192, 8, 2, psum=False),
    GateCase("gate_T8192_E16_k1_sigmoid", 8192, 16, 1, "sigmoid"),
]


def _full():
    cases = []
    for dt, tag in ((_BF, "bf16"), (_H, "fp16"), (_F32, "fp32")):
        for F, E, K in ((688, 16, 4), (688, 16, 1), (1376, 8, 2), (14336, 8, 2), (14336, 8, 1)):
            for T in (16384, 2048):
                for grad in (True, False):
                    cases.append(MLPCase(f"{tag}_{E}x{F}_k{K}_T{T}{'' if grad else '_infer'}", T, 4096, F, E, K,
                                         dt, grad))
        cases.append(MLPCase(f"{tag}_odd_3x689_k2_T2063", 2063, 1023, 689, 3, 2, dt))
        cases.append(MLPCase(f"{tag}_8x688_k4_T1", 1, 1024, 688, 8, 4, dt))
    for score in ("softmax", "sigmoid"):
        for bias in (False, True):
            for psum in (False, True):
                for E, K in ((16, 4), (16, 1), (8, 2), (8, 1)):
                    cases.append(GateCase(f"gate_{score}{'_bias' if bias else ''}{'_psum' if psum else ''}_E{E}_k{K}",
                                          8192, E, K, score, bias, psum))
    return cases


FULL = _full()


def record(case, target) -> list[Launch]:
    """The launches `case` makes on a GPU of `target` (nothing runs)."""
    with recording(target) as launches:
        case.run()
    return [ln for ln in launches if case.keep is None or case.keep(ln)]
