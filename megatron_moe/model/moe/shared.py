"""Always-on shared experts (LLaMA-MoE Sharing-Inter "residual" experts, DeepSeek shared experts).

All shared experts are concatenated into one SwiGLU of width Fs = num_shared_experts * shared_expert_ffn_size
(the sum of SwiGLUs over disjoint neuron sets equals one SwiGLU over their union), tensor-parallel like the dense
MLP: `shared.w1.weight` / `shared.w3.weight` [Fs, D] column-split, `shared.w2.weight` [D, Fs] row-split over TP.
Output = shared_expert_scale * SwiGLU(x), added to the routed experts' output.
"""
from __future__ import annotations

import torch

from ...parallel import ParallelState
from ..layers import DenseMLP


class SharedExperts(DenseMLP):
    def __init__(self, hidden: int, ffn_total: int, scale: float, ps: ParallelState):
        if ffn_total % ps.tp_size:
            raise ValueError(f"tp={ps.tp_size} does not divide the shared-expert width {ffn_total}")
        super().__init__(hidden, ffn_total, ps)
        self.scale = scale

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        y_BSD = super().forward(x_BSD)
        return y_BSD if self.scale == 1.0 else y_BSD * self.scale
