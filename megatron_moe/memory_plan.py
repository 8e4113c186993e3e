"""Per-GPU memory estimate for a training layout, and a search for a layout that fits.

    counts = count_params(cfg)                       # total and activated parameters
    plan = plan_memory(cfg, layout_from_config(cfg, world_size=16))
    plan.fits(80.0), plan.total_gib
    best = suggest_layout(cfg, world_size=16, gpu_mem_gib=80.0)   # a MemoryPlan or None

Legend: L layers, D hidden, F expert FFN width, E experts, K top-k, V vocabulary, G kv heads, h head dim,
S sequence length, B micro batch, T = S*B tokens per micro-batch per data-parallel rank, t = tp,
σ = t with sequence parallel else 1, a = activation bytes (2 in bf16, 4 in fp32). Sizes in bytes; GiB = 2^30.

Parameters (what megatron_moe.model builds, untied embedding/head):
  embedding V*D, LM head V*D, per layer: attention D*D (q) + 2*D*G*h (k, v) + D*D (o), two RMSNorms 2*D,
  MLP: dense 3*D*d_ff, or MoE = E routed experts 3*D*F each + shared experts 3*D*F_shared each
  + router (noisy_topk: gate D*E (+E*E for the mlp gate network) and noise D*E; others: D*E); final norm D.
  Activated = everything except the routed experts, plus K of the E routed experts per MoE layer.
Per-GPU shards: attention, dense MLP, embedding and head are split over tp; routed experts over ep
  (E/ep per rank) and etp (F/etp); norms, routers and shared experts are replicated.
Model state per parameter (Megatron mixed precision): bf16 = weight 2 + fp32 grad 4 + fp32 master 4 + Adam m,v 8
  = 18 bytes; fp32 = 4 + 4 + 0 + 8 = 16 bytes. ZeRO-1 divides master + Adam by dp = world/tp for dense
  parameters and by edp = world/(ep*etp) for expert parameters: bf16 costs 6 + 12/dp bytes per parameter.
Activations per micro-batch, in the manner of Korthikanti et al. 2022 ("Reducing Activation Recomputation in
  Large Transformer Models", sbh(34 + 5as/h) per layer), re-derived for this model: no dropout, SDPA/flash
  attention (no S² scores kept), SwiGLU, GQA, fused RMSNorm (keeps only its input), and MoE token replication:
    attention   a*T*D/σ (norm in) + a*T*D (q/k/v input, gathered over TP) + a*T*(D + 2*G*h)/t (q, k, v)
                + a*T*D/t (attention out) + 4*T*n_heads/t (softmax log-sum-exp)
    mlp norm    a*T*D/σ
    dense MLP   a*T*D (input) + 4*a*T*d_ff/t (w1 out, silu, w3 out, product)
    MoE MLP     with T_r = T/σ tokens routed per rank: a*T_r*D (router input) + 16*T_r*E (four fp32 router
                tensors) + a*T_r*K*etp*D (dispatched expert input) + 4*a*T_r*K*F (expert SwiGLU tensors)
                + a*T_r*K*D (expert outputs kept for the score gradient) + 4*a*T_r*F_shared_total (shared)
    outside     a*T*D/σ (final norm in) + a*T*D (head input) + (a + 8)*T*V/t (logits, fp32 copy, softmax)
  With full recomputation each layer keeps only its input a*T*D/σ, plus one layer's activations while it is
  recomputed in backward.
All-to-all buffers (ep*etp > 1): send + receive of one dispatch, 2 * a*T_r*K*etp*D * imbalance, where
  imbalance (default 2.0) leaves headroom for dropless routing sending more than the balanced share to a rank.
Overhead: a fixed allowance for the CUDA context, NCCL buffers and allocator fragmentation (default 4 GiB).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Optional

from .config import Config, ConfigError
from .errors import UserError

GIB = 2 ** 30
STATE_BYTES = {  # per parameter: (weight, grad, master, adam m+v)
    "bf16": (2, 4, 4, 8),
    "fp32": (4, 4, 0, 8),
}


class MemoryPlanError(UserError, ValueError):
    """The config or layout cannot be planned (one line naming the numbers)."""


@dataclass(frozen=True)
class Layout:
    """One parallel layout and batch choice for `world_size` GPUs."""

    world_size: int
    tp: int = 1
    ep: int = 1
    etp: int = 1
    sp: bool = False
    zero1: bool = False
    recompute: bool = False
    micro_batch: int = 1

    @property
    def dp(self) -> int:
        return self.world_size // self.tp

    @property
    def edp(self) -> int:
        return self.world_size // (self.ep * self.etp)

    def describe(self) -> str:
        return (f"tp={self.tp} ep={self.ep} etp={self.etp} sp={self.sp} dp={self.dp} edp={self.edp} "
                f"zero1={self.zero1} recompute={self.recompute} micro_batch={self.micro_batch}")


@dataclass(frozen=True)
class ParamCounts:
    total: int
    activated: int
    dense: int
    """Everything that is not a routed expert (embedding, head, attention, norms, dense MLPs, routers, shared)."""
    routed_experts: int


@dataclass(frozen=True)
class MemoryPlan:
    layout: Layout
    weights: float
    grads: float
    optimizer: float
    activations: float
    a2a_buffers: float
    overhead: float
    local_dense_params: int
    local_expert_params: int

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.a2a_buffers + self.overhead

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def fits(self, gpu_mem_gib: float) -> bool:
        return self.total <= gpu_mem_gib * GIB


# ------------------------------------------------------------------------------------ parameters
def _router_params(cfg: Config) -> int:
    D, E, moe = cfg.model.hidden_size, cfg.moe.num_experts, cfg.moe
    n = D * E
    if moe.router == "noisy_topk":
        n += E * E if moe.gate_network == "mlp" else 0
        n += D * E if moe.noisy_gate else 0
    return n


def _shared_ffn(cfg: Config) -> int:
    """Total FFN width of the shared experts of one MoE layer."""
    moe = cfg.moe
    if not moe.num_shared_experts:
        return 0
    return moe.num_shared_experts * (moe.shared_expert_ffn_size or moe.ffn_size(cfg.model))


def _layer_kinds(cfg: Config) -> tuple[int, int]:
    n_moe = sum(cfg.moe.is_moe_layer(i) for i in range(cfg.model.num_layers))
    return n_moe, cfg.model.num_layers - n_moe


def _attention_params(m) -> tuple[int, int]:
    """(weights + biases of one attention block split over TP, replicated part: norms and the output bias)."""
    D, q, kv = m.hidden_size, m.num_heads * m.head_width, m.kv_heads * m.head_width
    split = 2 * D * q + 2 * D * kv + ((q + 2 * kv) if m.qkv_bias else 0)
    replicated = 2 * D + (D if m.attn_out_bias else 0)
    return split, replicated


def _embedding_params(m) -> int:
    """Input embedding plus LM head (one tensor when tied)."""
    return (1 if m.tie_embeddings else 2) * m.vocab_size * m.hidden_size


def count_params(cfg: Config) -> ParamCounts:
    """Total and activated parameter counts of the model `cfg` describes."""
    m, moe = cfg.model, cfg.moe
    D = m.hidden_size
    n_moe, n_dense = _layer_kinds(cfg)
    split, replicated = _attention_params(m)
    dense = _embedding_params(m) + D + m.num_layers * (split + replicated) + n_dense * 3 * D * m.intermediate_size
    routed = activated_routed = 0
    if moe.enabled:
        dense += n_moe * (_router_params(cfg) + 3 * D * _shared_ffn(cfg))
        per_expert = 3 * D * moe.ffn_size(m)
        routed = n_moe * moe.num_experts * per_expert
        activated_routed = n_moe * moe.top_k * per_expert
    return ParamCounts(total=dense + routed, activated=dense + activated_routed, dense=dense, routed_experts=routed)


def local_params(cfg: Config, layout: Layout) -> tuple[int, int]:
    """(dense, expert) parameters held by one rank of `layout`."""
    m, moe = cfg.model, cfg.moe
    D, t = m.hidden_size, layout.tp
    n_moe, n_dense = _layer_kinds(cfg)
    split, replicated = _attention_params(m)
    dense = (_embedding_params(m) // t + D + m.num_layers * (split // t + replicated)
             + n_dense * 3 * D * m.intermediate_size // t)
    expert = 0
    if moe.enabled:
        dense += n_moe * (_router_params(cfg) + 3 * D * _shared_ffn(cfg))
        expert = n_moe * (moe.num_experts // layout.ep) * 3 * D * (moe.ffn_size(m) // layout.etp)
    return dense, expert


# ----------------------------------------------------------------------------------- activations
def _act_bytes(cfg: Config) -> int:
    return 4 if cfg.train.precision == "fp32" else 2  # auto means bf16 on the GPUs this plans for


def layer_activation_bytes(cfg: Config, layout: Layout, moe_layer: bool) -> float:
    """Bytes one decoder layer keeps for backward, one micro-batch, no recomputation (module docstring)."""
    m, moe = cfg.model, cfg.moe
    a, D, t = _act_bytes(cfg), m.hidden_size, layout.tp
    sigma = t if layout.sp else 1
    T = cfg.data.seq_len * layout.micro_batch
    kv = m.kv_heads * m.head_width
    q = m.num_heads * m.head_width
    attn = a * T * D / sigma + a * T * D + a * T * (q + 2 * kv) / t + a * T * q / t + 4 * T * m.num_heads / t
    mlp = a * T * D / sigma
    if moe_layer:
        Tr, K, F = T / sigma, moe.top_k, moe.ffn_size(m)
        mlp += (a * Tr * D + 16 * Tr * moe.num_experts + a * Tr * K * layout.etp * D + 4 * a * Tr * K * F
                + a * Tr * K * D + 4 * a * Tr * _shared_ffn(cfg))
    else:
        mlp += a * T * D + 4 * a * T * m.intermediate_size / t
    return attn + mlp


def activation_bytes(cfg: Config, layout: Layout) -> float:
    """Activation bytes of one micro-batch at the peak of backward."""
    m = cfg.model
    a, D, t = _act_bytes(cfg), m.hidden_size, layout.tp
    sigma = t if layout.sp else 1
    T = cfg.data.seq_len * layout.micro_batch
    n_moe, n_dense = _layer_kinds(cfg)
    outside = a * T * D / sigma + a * T * D + (a + 8) * T * m.vocab_size / t
    per_moe = layer_activation_bytes(cfg, layout, True) if n_moe else 0.0
    per_dense = layer_activation_bytes(cfg, layout, False) if n_dense else 0.0
    if layout.recompute:
        return outside + m.num_layers * a * T * D / sigma + max(per_moe, per_dense)
    return outside + n_moe * per_moe + n_dense * per_dense


def a2a_buffer_bytes(cfg: Config, layout: Layout, imbalance: float = 2.0) -> float:
    """Send + receive buffers of one token dispatch (zero without expert parallelism)."""
    if not cfg.moe.enabled or layout.ep * layout.etp == 1:
        return 0.0
    sigma = layout.tp if layout.sp else 1
    Tr = cfg.data.seq_len * layout.micro_batch / sigma
    return 2 * _act_bytes(cfg) * Tr * cfg.moe.top_k * layout.etp * cfg.model.hidden_size * imbalance


# ------------------------------------------------------------------------------------------ plan
def layout_from_config(cfg: Config, world_size: int) -> Layout:
    p, tr = cfg.parallel, cfg.train
    return Layout(world_size=world_size, tp=p.tp, ep=p.ep, etp=p.expert_tp, sp=p.sp, zero1=tr.sharding == "zero1",
                  recompute=tr.recompute, micro_batch=tr.micro_batch_size)


def apply_layout(cfg: Config, layout: Layout) -> Config:
    """A copy of `cfg` with the layout's parallel and batch settings."""
    out = copy.deepcopy(cfg)
    out.parallel.tp, out.parallel.ep, out.parallel.sp = layout.tp, layout.ep, layout.sp
    out.parallel.etp = layout.etp if layout.etp > 1 else None
    out.train.sharding = "zero1" if layout.zero1 else "none"
    out.train.recompute, out.train.micro_batch_size = layout.recompute, layout.micro_batch
    return out


def plan_memory(cfg: Config, layout: Layout, *, overhead_gib: float = 4.0, a2a_imbalance: float = 2.0) -> MemoryPlan:
    """Per-GPU bytes of `layout` for `cfg` (formulas in the module docstring)."""
    try:
        apply_layout(cfg, layout).validate(layout.world_size)
    except ConfigError as err:
        raise MemoryPlanError(f"layout {layout.describe()} is invalid: {err}") from None
    w, g, master, adam = STATE_BYTES["fp32" if cfg.train.precision == "fp32" else "bf16"]
    dense, expert = local_params(cfg, layout)
    shard_dense = layout.dp if layout.zero1 else 1
    shard_expert = layout.edp if layout.zero1 else 1
    optimizer = (master + adam) * (dense / shard_dense + expert / shard_expert)
    return MemoryPlan(layout=layout, weights=float(w * (dense + expert)), grads=float(g * (dense + expert)),
                      optimizer=float(optimizer), activations=activation_bytes(cfg, layout),
                      a2a_buffers=a2a_buffer_bytes(cfg, layout, a2a_imbalance), overhead=overhead_gib * GIB,
                      local_dense_params=dense, local_expert_params=expert)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(cfg: Config, world_size: int, gpus_per_node: int = 8, max_micro_batch: int = 8) -> list[Layout]:
    """Layouts that validate: tp and ep*etp within a node (NVLink), etp in {1, configured}, micro batch a power of 2."""
    E = cfg.moe.num_experts
    eps = [d for d in _divisors(E) if d <= gpus_per_node] if cfg.moe.enabled else [1]
    etps = sorted({1, cfg.parallel.expert_tp})
    mbs = [2 ** i for i in range(max_micro_batch.bit_length()) if 2 ** i <= max_micro_batch]
    out = []
    for tp, ep, etp, zero1, recompute, mb in itertools.product(
            [d for d in _divisors(world_size) if d <= gpus_per_node], eps, etps, (True, False), (False, True), mbs):
        if ep * etp > gpus_per_node:
            continue
        layout = Layout(world_size, tp, ep, etp, tp > 1, zero1, recompute, mb)
        try:
            apply_layout(cfg, layout).validate(world_size)
        except ConfigError:
            continue
        out.append(layout)
    return out


def suggest_layout(cfg: Config, world_size: int, gpu_mem_gib: float, *, gpus_per_node: int = 8,
                   overhead_gib: float = 4.0, a2a_imbalance: float = 2.0, margin: float = 0.9) -> Optional[MemoryPlan]:
    """The preferred layout whose estimate stays within margin * gpu_mem_gib, or None. Preference: smallest tp
    (TP communicates every layer), then no recomputation (~1/3 more compute), then the largest micro batch up
    to 4, then the smallest ep, then ZeRO-1 on."""
    fitting = []
    for layout in candidate_layouts(cfg, world_size, gpus_per_node):
        plan = plan_memory(cfg, layout, overhead_gib=overhead_gib, a2a_imbalance=a2a_imbalance)
        if plan.fits(gpu_mem_gib * margin):
            fitting.append(plan)
    if not fitting:
        return None

    def key(plan: MemoryPlan):
        lay = plan.layout
        return (lay.tp, lay.recompute, -min(lay.micro_batch, 4), lay.ep, not lay.zero1, lay.micro_batch, plan.total)

    return min(fitting, key=key)


def format_plan(cfg: Config, plan: MemoryPlan, gpu_mem_gib: float) -> str:
    """A human-readable table of `plan` (GiB per GPU)."""
    counts = count_params(cfg)
    rows = [
        f"layout: {plan.layout.describe()} (world {plan.layout.world_size})",
        f"params: total {counts.total / 1e9:.3f}B, activated {counts.activated / 1e9:.3f}B; "
        f"per GPU dense {plan.local_dense_params / 1e9:.3f}B + experts {plan.local_expert_params / 1e9:.3f}B",
    ]
    for name in ("weights", "grads", "optimizer", "activations", "a2a_buffers", "overhead"):
        rows.append(f"  {name:<12} {getattr(plan, name) / GIB:8.2f} GiB")
    verdict = "fits" if plan.fits(gpu_mem_gib) else "does NOT fit"
    rows.append(f"  {'total':<12} {plan.total_gib:8.2f} GiB  -> {verdict} in {gpu_mem_gib:g} GiB")
    return "\n".join(rows)


def plan_fields(plan: MemoryPlan) -> dict:
    """Plan as a JSON-friendly dict (GiB values plus the layout)."""
    out = {k: v / GIB for k, v in dataclasses.asdict(plan).items() if isinstance(v, float)}
    out.update(total=plan.total_gib, layout=dataclasses.asdict(plan.layout),
               local_dense_params=plan.local_dense_params, local_expert_params=plan.local_expert_params)
    return out
