"""Typed configuration: one dataclass per section, one docstring per field.

The dataclasses are the single source of truth. YAML files only override their defaults, and
`key.sub=value` command-line overrides are applied on top (values parsed as YAML scalars).

    cfg = load_config("examples/configs/tiny_cpu.yaml", ["train.lr=1e-3", "parallel.ep=2"])
    cfg.validate(world_size=4)

Validation errors are `ConfigError` with one line that names the numbers.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration that cannot run; the message is one line naming the offending values."""


def _at_least(section: str, obj, names: tuple, low: float, strict: bool = False) -> None:
    """ConfigError unless every named (non-None) field is >= low (> low when strict)."""
    for name in names:
        v = getattr(obj, name)
        if v is None:
            continue
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise ConfigError(f"{section}.{name}={v} must be a finite number")
        if v < low or (strict and v == low):
            raise ConfigError(f"{section}.{name}={v} must be {'>' if strict else '>='} {low:g}")


# ----------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """A LLaMA-architecture decoder (the dense skeleton every MoE model is built on)."""

    hidden_size: int = 4096
    """Model width d."""
    intermediate_size: int = 11008
    """Dense FFN width d_ff (SwiGLU). MoE experts split this into num_experts parts by default."""
    num_layers: int = 32
    """Number of decoder layers."""
    num_heads: int = 32
    """Number of attention (query) heads."""
    num_kv_heads: Optional[int] = None
    """Key/value heads for grouped-query attention; None means num_heads (plain multi-head)."""
    vocab_size: int = 32000
    """Vocabulary size (rows of the embedding and of the LM head)."""
    head_dim: Optional[int] = None
    """Width h of one attention head; None means hidden_size // num_heads (q is [num_heads*h, D])."""
    max_seq_len: int = 4096
    """Longest sequence the model accepts (HF max_position_embeddings)."""
    rope_theta: float = 10000.0
    """RoPE base frequency θ."""
    rope_scaling: Optional[dict] = None
    """Rotary scaling, HF style without rope_theta: None or {"rope_type": "default" | "linear" | "llama3" | "yarn",
    "factor": ..., ...} (llama3: low_freq_factor, high_freq_factor, original_max_position_embeddings; yarn:
    original_max_position_embeddings, beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim, truncate)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    qkv_bias: bool = False
    """q/k/v projections have a bias (Qwen2; LLaMA with attention_bias)."""
    attn_out_bias: bool = False
    """The attention output projection has a bias (LLaMA with attention_bias)."""
    tie_embeddings: bool = False
    """The LM head is the input embedding (one parameter; LLaMA-3.2 1B/3B, small Qwen2.5)."""
    sliding_window: Optional[int] = None
    """Sliding-window attention width of the source model (Mistral v0.1, Qwen2 with use_sliding_window). Not
    implemented: sequences longer than the window are refused, so every accepted input computes exactly."""
    init_std: float = 0.02
    """Std of the normal init for weights of a model trained from scratch (converted models ignore it)."""
    bos_token_id: int = 1
    """Beginning-of-sequence token id (LLaMA-2: 1)."""
    eos_token_id: Any = 2
    """End-of-sequence token id, or a list of them (LLaMA-3.1 instruct: [128001, 128008, 128009])."""

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_width(self) -> int:
        """h: head_dim, or hidden_size // num_heads."""
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def seq_limit(self) -> int:
        """Longest sequence this model computes exactly: max_seq_len, and the sliding window when there is one."""
        return min(self.max_seq_len, self.sliding_window or self.max_seq_len)

    def validate(self) -> None:
        _at_least("model", self, ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "sliding_window"), 0,
                  strict=True)
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}")
        if self.num_heads % self.kv_heads:
            raise ConfigError(f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.kv_heads}")
        if self.head_width % 2:
            raise ConfigError(f"head_dim={self.head_width} must be even for rotary embeddings")
        _at_least("model", self, ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                                  "vocab_size", "max_seq_len", "rope_theta", "norm_eps"), 0, strict=True)
        _at_least("model", self, ("init_std",), 0)
        check_rope_scaling(self.rope_scaling, "model.rope_scaling")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.vocab_size
                                  for i in ids):
                raise ConfigError(f"model.{name}={value!r} must be a token id in [0, {self.vocab_size})"
                                  + (" or a list of them" if name == "eos_token_id" else ""))


ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_ROPE_KEYS = {"default": set(), "linear": {"factor"},
              "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
              "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                       "mscale", "mscale_all_dim", "truncate"}}


def check_rope_scaling(sc: Optional[dict], where: str) -> None:
    """ConfigError unless `sc` is None or a rotary scaling this model implements, with only keys it uses."""
    if sc is None:
        return
    if not isinstance(sc, dict):
        raise ConfigError(f"{where} must be a mapping or null, got {type(sc).__name__}")
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"{where}: rope_type={kind!r} is not implemented (supported: {', '.join(ROPE_TYPES)})")
    extra = set(sc) - _ROPE_KEYS[kind] - {"rope_type", "type", "rope_theta"}
    if extra:
        raise ConfigError(f"{where}: {sorted(extra)[0]!r} is not used by rope_type={kind} and would be ignored")
    if kind != "default" and not isinstance(sc.get("factor"), (int, float)):
        raise ConfigError(f"{where}: rope_type={kind} needs a numeric 'factor'")
    if kind == "llama3" and "original_max_position_embeddings" not in sc:
        raise ConfigError(f"{where}: rope_type=llama3 needs 'original_max_position_embeddings'")


def _llama3_rope(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001)
_QWEN25 = dict(rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, bos_token_id=151643, eos_token_id=151643)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
                      vocab_size=32000, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40,
                       vocab_size=32000, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                      max_seq_len=8192, **_LLAMA3),
    "llama3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                        max_seq_len=131072, rope_scaling=_llama3_rope(8.0), **_LLAMA3),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
                        head_dim=64, max_seq_len=131072, rope_scaling=_llama3_rope(32.0), tie_embeddings=True,
                        **_LLAMA3),
    "llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24, num_kv_heads=8,
                        head_dim=128, max_seq_len=131072, rope_scaling=_llama3_rope(32.0), tie_embeddings=True,
                        **_LLAMA3),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       vocab_size=32768, max_seq_len=32768, rope_theta=1000000.0, norm_eps=1e-5),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                         vocab_size=151936, max_seq_len=32768, tie_embeddings=True, **_QWEN25),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                         vocab_size=151936, max_seq_len=32768, tie_embeddings=True, **_QWEN25),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                       vocab_size=152064, max_seq_len=131072, **_QWEN25),
    "tiny": dict(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
                 vocab_size=512, max_seq_len=128, rope_theta=10000.0, norm_eps=1e-5),
}
"""Public configs of the supported bases (config.json of each release); `model.preset: NAME` in a YAML file."""


# ------------------------------------------------------------------------------------------- moe
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


# -------------------------------------------------------------------------------------- parallel
@dataclass
class ParallelConfig:
    """Parallel layout. world = tp * dp for dense parts and world = etp * ep * edp for experts."""

    tp: int = 1
    """Tensor-parallel size (attention heads, dense FFN, vocabulary split across ranks)."""
    ep: int = 1
    """Expert-parallel size (experts split across ranks; tokens move by all-to-all)."""
    etp: Optional[int] = None
    """Expert-tensor-parallel size (each expert's FFN split across ranks); None means 1."""
    sp: bool = False
    """Sequence parallel: activations outside attention/MLP are split along the sequence across the TP group."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo."""

    @property
    def expert_tp(self) -> int:
        return self.etp or 1

    def dp(self, world_size: int) -> int:
        return world_size // self.tp

    def edp(self, world_size: int) -> int:
        return world_size // (self.ep * self.expert_tp)

    def validate(self, world_size: int, model: ModelConfig, moe: MoEConfig) -> None:
        for name in ("tp", "ep", "etp"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"parallel.{name}={v} must be >= 1" + (" (or null for 1)" if name == "etp" else ""))
        if world_size % self.tp:
            raise ConfigError(f"world size {world_size} is not divisible by tp={self.tp}")
        if world_size % (self.ep * self.expert_tp):
            raise ConfigError(f"world size {world_size} is not divisible by ep*etp={self.ep}*{self.expert_tp}")
        if model.num_heads % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide num_heads={model.num_heads}")
        if model.kv_heads % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide num_kv_heads={model.kv_heads}")
        if model.intermediate_size % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide intermediate_size={model.intermediate_size}")
        if model.vocab_size % self.tp:
            raise ConfigError(f"tp={self.tp} does not divide vocab_size={model.vocab_size}")
        if self.sp and self.tp == 1:
            raise ConfigError("parallel.sp=true needs tp > 1")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ConfigError(f"parallel.backend={self.backend!r} is not one of auto, nccl, gloo")
        if moe.enabled:
            if moe.num_experts % self.ep:
                raise ConfigError(f"ep={self.ep} does not divide num_experts={moe.num_experts}")
            if moe.ffn_size(model) % self.expert_tp:
                raise ConfigError(f"etp={self.expert_tp} does not divide expert_ffn_size={moe.ffn_size(model)}")
        elif self.ep > 1:
            raise ConfigError(f"parallel.ep={self.ep} needs an MoE model (moe.num_experts > 0)")


# ------------------------------------------------------------------------------------------ data
@dataclass
class DomainConfig:
    """One data domain: a name and the indexed-dataset prefixes that hold its tokens."""

    name: str = ""
    """Domain name (e.g. cc, c4, github, wikipedia, book, arxiv, stackexchange)."""
    prefixes: list = field(default_factory=list)
    """Paths of megatron indexed datasets (without .bin/.idx) that make up this domain."""
    weight: Optional[float] = None
    """Static sampling weight (normalised over domains); None when data.weights_preset gives it."""
    ref_loss: Optional[float] = None
    """Reference validation loss for dynamic sampling (Sheared-LLaMA); see data.sampling."""


@dataclass
class DataConfig:
    """Training data: domains, sequence packing and domain sampling."""

    domains: list = field(default_factory=list)
    """List of DomainConfig (YAML: list of mappings with name, prefixes, weight, ref_loss)."""
    seq_len: int = 4096
    """Tokens per training sequence (documents are packed across sequence boundaries)."""
    sampling: str = "static"
    """Domain sampling: static (fixed weights) or dynamic (weights updated from validation losses)."""
    weights_preset: Optional[str] = None
    """Named static weights: uniform, llama, sheared_llama (mapped onto the domain names)."""
    ref_losses_preset: Optional[str] = None
    """Named reference losses for dynamic sampling: llama2-7b (the spec's LLaMA-2-7B losses); a domain's ref_loss wins."""
    dynamic_variant: str = "sheared"
    """dynamic rule: sheared (softmax(log a + eta*(L - L_ref)) then smoothing) or paper (a * exp(max(0, L - L_ref)))."""
    dynamic_eta: float = 1.0
    """Step size eta of the dynamic update."""
    dynamic_smoothing: float = 1e-4
    """Smoothing c: a = (1 - c) * a' + c / num_domains."""
    valid_fraction: float = 0.01
    """Fraction of each domain's documents held out for validation (deterministic split)."""
    seed: int = 1227
    """Seed of shuffling and domain sampling."""
    tokenizer: Optional[str] = None
    """Tokenizer (sentencepiece .model, HF dir or tokenizer.json), used for demos and generation."""
    num_workers: int = 0
    """Reserved for background loading; MultiDomainData reads packed samples synchronously from mmap (fast)."""

    def __post_init__(self) -> None:
        self.domains = [d if isinstance(d, DomainConfig) else _build(DomainConfig, d, "data.domains[]")
                        for d in self.domains]

    def validate(self) -> None:
        if self.sampling not in ("static", "dynamic"):
            raise ConfigError(f"data.sampling={self.sampling!r} is not one of static, dynamic")
        if self.dynamic_variant not in ("sheared", "paper"):
            raise ConfigError(f"data.dynamic_variant={self.dynamic_variant!r} is not one of sheared, paper")
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError(f"data.valid_fraction={self.valid_fraction} must be in [0, 1)")
        if not 0 <= self.dynamic_smoothing <= 1:
            raise ConfigError(f"data.dynamic_smoothing={self.dynamic_smoothing} must be in [0, 1]")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len={self.seq_len} must be >= 2")
        _at_least("data", self, ("dynamic_eta", "num_workers"), 0)
        names = [d.name for d in self.domains]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"data.domains need distinct non-empty names, got {names}")
        for d in self.domains:
            if not d.prefixes or not all(isinstance(p, str) and p for p in d.prefixes):
                raise ConfigError(f"data.domains[{d.name}].prefixes must be a non-empty list of dataset prefixes")
            _at_least(f"data.domains[{d.name}]", d, ("weight",), 0)


# --------------------------------------------------------------------------------------- training
SHARDING_MODES = ("none", "zero1", "zero2", "fsdp")
RENAMED_KEYS = {"train.zero1": "train.zero1 was replaced by train.sharding (zero1: true -> sharding: zero1)"}


@dataclass
class TrainConfig:
    """Optimizer, schedule, batch sizes and the training loop."""

    micro_batch_size: int = 1
    """Sequences per rank per forward/backward."""
    global_batch_size: int = 8
    """Sequences per optimizer step across all data-parallel ranks (accumulation fills the gap)."""
    train_steps: int = 100
    """Optimizer steps to run."""
    lr: float = 2e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine/linear)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    lr_schedule: str = "cosine"
    """Learning-rate schedule after warm-up: cosine, linear or constant."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to norms and biases)."""
    clip_grad: float = 1.0
    """Clip gradients to this global norm (0 disables)."""
    seed: int = 1227
    """Global seed (model init, dropout-free noise, data order)."""
    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32. bf16 keeps fp32 master weights."""
    recompute: bool = False
    """Activation recomputation of every decoder layer."""
    sharding: str = "none"
    """What is sharded over the data-parallel ranks (dense tensors over dp, expert tensors over edp):
    none (every rank holds full weights, gradients and AdamW state); zero1 (AdamW state, torch
    ZeroRedundancyOptimizer); zero2 (FSDP2 with reshard_after_forward=False: fp32 master weights, gradients and
    AdamW state sharded, weights gathered once per micro-batch and kept from forward to backward); fsdp (FSDP2:
    as zero2, and weights are gathered layer by layer in forward and again in backward). Composes with
    tp/sp/ep/etp. README "Parallelism" says which to pick."""
    offload_optimizer: bool = False
    """Keep the sharded fp32 master weights, gradients and AdamW state in host memory and run AdamW on the CPU
    (FSDP2's CPUOffloadPolicy); needs sharding zero2 or fsdp."""
    eval_interval: int = 0
    """Evaluate per-domain validation loss every N steps (0 = never)."""
    eval_iters: int = 4
    """Batches per domain per evaluation."""
    log_interval: int = 1
    """Log metrics every N steps."""
    max_bad_steps: int = 5
    """Abort after this many consecutive steps with a non-finite loss or gradient norm."""
    exit_interval: Optional[int] = None
    """Save a checkpoint and exit cleanly once the step count is a multiple of this (e.g. to fit a SLURM time
    limit; the same command resumes). None runs to train_steps."""
    stop_signals: list = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals that stop training gracefully: finish the step, save a checkpoint, exit with code 75 (rerun the
    same command to resume). SIGTERM is what slurm, `scancel`, preemption and `docker stop` send; SIGUSR1 is what
    `sbatch --signal=USR1@SECONDS` sends ahead of the time limit. [] makes SIGTERM stop at once (exit 143)."""

    def validate(self) -> None:
        if self.sharding not in SHARDING_MODES:
            raise ConfigError(f"train.sharding={self.sharding!r} is not one of {', '.join(SHARDING_MODES)}")
        if self.offload_optimizer and self.sharding not in ("zero2", "fsdp"):
            raise ConfigError(f"train.offload_optimizer=true needs train.sharding zero2 or fsdp (FSDP2's CPU "
                              f"offload), not {self.sharding}")
        if self.lr_schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"train.lr_schedule={self.lr_schedule!r} is not one of cosine, linear, constant")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision={self.precision!r} is not one of auto, bf16, fp32")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("micro_batch_size", "global_batch_size", "train_steps", "max_bad_steps", "eval_iters",
                     "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        _at_least("train", self, ("lr", "warmup_steps", "weight_decay", "clip_grad", "eval_interval"), 0)
        _at_least("train", self, ("exit_interval",), 1)
        _at_least("train", self, ("adam_eps",), 0, strict=True)
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError(f"train.adam_beta1={self.adam_beta1}, adam_beta2={self.adam_beta2} must be in [0, 1)")
        from .signals import parse_signal

        for name in self.stop_signals:
            try:
                sig = parse_signal(name)
            except ValueError:
                raise ConfigError(f"train.stop_signals: unknown signal {name!r}") from None
            if sig.name in ("SIGKILL", "SIGSTOP", "SIGINT"):
                raise ConfigError(f"train.stop_signals: {sig.name} cannot be used (SIGINT, Ctrl-C, always stops at "
                                  f"once; SIGKILL and SIGSTOP cannot be caught)")


@dataclass
class CheckpointConfig:
    """Checkpoint saving and loading."""

    load: Optional[str] = None
    """Checkpoint to start from (converted MoE or trained); its config.json supplies the model config."""
    save_interval: int = 0
    """Save every N steps (0 = only at the end)."""
    keep_last: int = 3
    """Keep the newest N checkpoints in the run directory (0 keeps all)."""
    save_optimizer: bool = True
    """Save optimizer state (needed for exact resume)."""

    def validate(self) -> None:
        _at_least("checkpoint", self, ("save_interval", "keep_last"), 0)
        if self.load is not None and not self.load:
            raise ConfigError("checkpoint.load is an empty string; give a path or null")


@dataclass
class LoggingConfig:
    """Run directory and metrics sinks."""

    run_dir: str = "runs/default"
    """Run directory: resolved config, metrics.jsonl, checkpoints/, tensorboard/."""
    tensorboard: bool = True
    """Write TensorBoard event files to run_dir/tensorboard."""
    wandb_project: Optional[str] = None
    """wandb project; None disables wandb. Without WANDB_API_KEY it runs offline (sync later)."""
    wandb_name: Optional[str] = None
    """wandb run name (defaults to the run directory name)."""
    peak_tflops: Optional[float] = None
    """Per-device peak TFLOPS for MFU; None picks a known value for the GPU (H100 989, A100 312) or skips MFU."""
    lock_run_dir: bool = True
    """Hold an flock on run_dir/.lock while training, so a second job on the same run directory is refused
    (training/run_lock.py). Set false only on a filesystem without flock support."""

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("logging.run_dir is empty")
        _at_least("logging", self, ("peak_tflops",), 0, strict=True)


@dataclass
class Config:
    """Everything a run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The decoder architecture."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """Mixture-of-Experts settings."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Parallel layout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimization and loop."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging."""

    explicit: dict = field(default_factory=dict, repr=False, compare=False, metadata={"internal": True})
    """Dotted model/moe keys the user wrote -> where (the YAML file, or 'the command line'); a model preset's
    fields are not among them. Filled by load_config / mark_explicit; not part of to_dict. A loaded checkpoint
    supplies the model, so preflight refuses an explicit key that contradicts it, naming where it was written."""

    def mark_explicit(self, keys, source: str) -> None:
        """Record dotted model/moe keys as set by the user at `source` (for callers that build configs in code)."""
        for key in keys:
            self.explicit[key] = source

    def validate(self, world_size: int = 1) -> "Config":
        self.model.validate()
        self.moe.validate(self.model)
        self.parallel.validate(world_size, self.model, self.moe)
        self.train.validate()
        self.data.validate()
        self.checkpoint.validate()
        self.logging.validate()
        dp = self.parallel.dp(world_size)
        if self.train.global_batch_size % (self.train.micro_batch_size * dp):
            raise ConfigError(f"train.global_batch_size={self.train.global_batch_size} is not divisible by "
                              f"micro_batch_size*dp={self.train.micro_batch_size}*{dp}")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        if self.model.sliding_window and self.data.seq_len > self.model.sliding_window:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds the sliding window {self.model.sliding_window} "
                              f"of the model, which megatron_moe does not implement; use data.seq_len <= "
                              f"{self.model.sliding_window}")
        return self

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("explicit", None)
        return out


# ------------------------------------------------------------------------------ loading/overrides
def _build(cls, values: Any, where: str):
    """Build dataclass `cls` from a mapping, recursing into nested dataclasses; unknown keys are errors."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    values = dict(values)
    if cls is ModelConfig and "preset" in values:
        name = values.pop("preset")
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
        values = {**MODEL_PRESETS[name], **values}
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            renamed = RENAMED_KEYS.get(f"{where}.{key}".removeprefix("config."))
            if renamed:
                raise ConfigError(f"unknown config key {where}.{key}: {renamed}")
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {where}.{key}{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, kind, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check/convert a scalar to the annotated type (int->float allowed); raise ConfigError otherwise."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"{where}={value!r} must be a finite number")
        if number is not None:
            return number
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind in (list, dict) or origin in (list, dict):
        want = origin or kind
        if isinstance(value, want):
            return value
    if kind is Any:
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{where}={value!r} should be of type {name}")


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ['a.b=1', 'c=x'] into a nested dict, values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        from .structured import parse_yaml_scalar

        key, raw = item.split("=", 1)
        value = parse_yaml_scalar(raw, f"override {item!r}", ConfigError)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return nested


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge; `extra` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(values: dict, sources: Optional[dict] = None) -> Config:
    """Build and type-check a Config from nested values. `sources` maps a top-level part of the values to where
    it came from (default: every explicit key is attributed to 'the config')."""
    cfg = _build(Config, values, "config")
    for key in explicit_keys(values):
        cfg.explicit[key] = (sources or {}).get(key, "the config")
    return cfg


def explicit_keys(values: dict) -> list[str]:
    """Dotted keys the user wrote in the model and moe sections. `model.preset` itself is one, but the fields it
    fills are not: they are defaults, which a loaded checkpoint replaces."""
    out = []
    for section in ("model", "moe"):
        sec = values.get(section) or {}
        if isinstance(sec, dict):
            out += [f"{section}.{k}" for k in sorted(sec)]
    return out


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (or defaults when path is None) and apply key.sub=value overrides."""
    from .structured import read_yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = read_yaml(path, expect=dict, error=ConfigError, what="config file")
    extra = parse_overrides(overrides or [])
    sources = {k: str(path) for k in explicit_keys(values)} if path is not None else {}
    sources.update({k: "the command line" for k in explicit_keys(extra)})
    return config_from_dict(merge(values, extra), sources)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (round-trips through load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
