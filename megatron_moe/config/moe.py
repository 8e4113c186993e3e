"""Mixture-of-Experts settings (moe: section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ._base import ConfigError, _at_least
from .model import ModelConfig


ROUTERS = ("noisy_topk", "switch", "softmax_topk", "sigmoid")


@dataclass
class MoEConfig:
    """Mixture-of-Experts settings; num_experts=0 keeps every MLP dense."""

    num_experts: int = 0
    """Routed experts per MoE layer E (0 = dense model)."""
    top_k: int = 2
    """Experts chosen per token K."""
    expert_ffn_size: Optional[int] = None
    """FFN width F of one routed expert; None means model.intermediate_size // num_experts."""
    router: str = "noisy_topk"
    """Router type: noisy_topk (LLaMA-MoE), switch, softmax_topk (Mixtral), sigmoid (aux-loss-free, DeepSeek-V3)."""
    gate_network: str = "linear"
    """Gate network of noisy_topk: linear (Linear(d,E), zero-init) or mlp (Linear(d,E) -> Tanh -> Linear(E,E))."""
    score_scale: Optional[float] = None
    """Score scale factor s multiplying the routing weights; None means num_experts / top_k (LLaMA-MoE)."""
    aux_loss_coeff: float = 1e-2
    """Weight of the load-balancing loss (cv² terms for noisy_topk, Switch loss otherwise); 0 disables it."""
    z_loss_coeff: float = 0.0
    """Weight of the router z-loss mean(logsumexp(logits)²) (ST-MoE); 0 disables it."""
    balance_scope: str = "micro"
    """Tokens the balance loss is computed over: micro (each micro-batch across DP) or global (the step's whole
    global batch, Qwen's global-batch balancing; exact for any micro-batch size, costs one extra forward without
    gradients per step; see model/moe/balance.py)."""
    noisy_gate: bool = True
    """noisy_topk: add softplus-scaled Gaussian noise to the logits in training."""
    noise_epsilon: float = 1e-2
    """noisy_topk: constant added to softplus(x W_noise) to form the noise std."""
    switch_jitter: float = 0.0
    """switch: multiplicative input jitter epsilon in training (0 = Gumbel-free plain top-1)."""
    bias_update_rate: float = 1e-3
    """sigmoid: step of the aux-loss-free expert-bias update b += rate * sign(mean_load - load)."""
    capacity_factor: Optional[float] = None
    """None = dropless. Otherwise each expert takes at most ceil(cf * T * K / E) tokens; overflow is dropped."""
    num_shared_experts: int = 0
    """Always-on shared experts (LLaMA-MoE Sharing-Inter residual experts, DeepSeek shared experts)."""
    shared_expert_ffn_size: Optional[int] = None
    """FFN width of one shared expert; None means expert_ffn_size."""
    shared_expert_scale: float = 1.0
    """Scale multiplying the shared experts' output before it is added."""
    layer_freq: int = 1
    """Every layer_freq-th layer is MoE (1 = all); ignored when moe_layers is given."""
    moe_layers: Optional[list] = None
    """Explicit list of layer indices that are MoE (e.g. keep first and last dense)."""
    use_kernels: str = "auto"
    """Triton kernels for gating and the expert MLP: auto (on for CUDA tensors), on, off (torch reference)."""

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0

    def ffn_size(self, model: ModelConfig) -> int:
        return self.expert_ffn_size or model.intermediate_size // self.num_experts

    @property
    def scale(self) -> float:
        return self.score_scale if self.score_scale is not None else self.num_experts / self.top_k

    def is_moe_layer(self, layer: int) -> bool:
        if not self.enabled:
            return False
        if self.moe_layers is not None:
            return layer in self.moe_layers
        return layer % self.layer_freq == 0

    def count_moe_layers(self, layers: range) -> int:
        """How many of `layers` (a step-1 range of indices >= 0) are MoE layers (is_moe_layer), without a loop
        over them (the memory planner's search asks this for every stage of every candidate layout)."""
        if not self.enabled or not layers:
            return 0
        if self.moe_layers is not None:
            return sum(1 for i in set(self.moe_layers) if i in layers)
        f = self.layer_freq  # multiples of f in [start, stop)
        return (layers.stop - 1) // f - (layers.start - 1) // f  # floor division: start 0 counts layer 0

    def validate(self, model: ModelConfig) -> None:
        _at_least("moe", self, ("num_experts", "aux_loss_coeff", "z_loss_coeff", "noise_epsilon", "switch_jitter",
                                "bias_update_rate", "num_shared_experts"), 0)
        _at_least("moe", self, ("expert_ffn_size", "score_scale", "shared_expert_ffn_size", "layer_freq",
                                "top_k"), 0, strict=True)
        if not self.enabled:
            if self.num_shared_experts or self.moe_layers:
                raise ConfigError("moe.num_shared_experts / moe.moe_layers need moe.num_experts > 0")
            return
        if self.switch_jitter >= 1:
            raise ConfigError(f"moe.switch_jitter={self.switch_jitter} must be < 1")
        if self.router not in ROUTERS:
            raise ConfigError(f"moe.router={self.router!r} is not one of {', '.join(ROUTERS)}")
        if self.gate_network not in ("linear", "mlp"):
            raise ConfigError(f"moe.gate_network={self.gate_network!r} is not one of linear, mlp")
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"moe.top_k={self.top_k} must be between 1 and moe.num_experts={self.num_experts}")
        if self.router == "switch" and self.top_k != 1:
            raise ConfigError(f"moe.router=switch routes to one expert but moe.top_k={self.top_k}")
        if self.expert_ffn_size is None and model.intermediate_size % self.num_experts:
            raise ConfigError(f"model.intermediate_size={model.intermediate_size} is not divisible by "
                              f"moe.num_experts={self.num_experts}; set moe.expert_ffn_size")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ConfigError(f"moe.capacity_factor={self.capacity_factor} must be positive (or null for dropless)")
        if self.balance_scope not in ("micro", "global"):
            raise ConfigError(f"moe.balance_scope={self.balance_scope!r} is not one of micro, global")
        if self.use_kernels not in ("auto", "on", "off"):
            raise ConfigError(f"moe.use_kernels={self.use_kernels!r} is not one of auto, on, off")
        if self.moe_layers is not None:
            bad = [i for i in self.moe_layers if not isinstance(i, int) or not 0 <= i < model.num_layers]
            if bad:
                raise ConfigError(f"moe.moe_layers has {bad} outside 0..{model.num_layers - 1}")
            if not self.moe_layers:
                raise ConfigError("moe.moe_layers is empty; set moe.num_experts=0 for a dense model")
