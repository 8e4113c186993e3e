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
  = 18 bytes; fp32 = 4 + 4 + 0 + 8 = 16 bytes. Sharding (train.sharding) divides by s = dp = world/tp for dense
  parameters and s = edp = world/(ep*etp) for expert parameters, w = 2 (bf16) or 4 (fp32) compute weight bytes:
    none    weights w, grads 4 (+ one flat fp32 all-reduce bucket of min(2^25, local params) elements when dp or
            edp > 1: training/grads.py), optimizer master + Adam (12 bf16, 8 fp32)
    zero1   as none, optimizer / s: bf16 costs 6 + 12/s bytes per parameter (Megatron's distributed optimizer)
    zero2   FSDP2, gathered weights kept from forward to backward: weights w (all layers gathered at the peak;
            also a unit over a group of one, e.g. experts at edp = 1, computes with a copy of its shard),
            grads 4/s + one unit's unsharded gradient (w + 4 bytes per parameter of the largest unit: the
            compute-dtype gradient and its fp32 copy for the reduce-scatter), optimizer 12/s (the sharded fp32
            parameter is the master weight, + Adam m, v)
    fsdp    as zero2, but weights are gathered one unit at a time: w * (root + 2 * largest layer unit) (the root:
            embedding, final norm, head stay gathered; a layer unit is a decoder layer with its experts; two for
            the current and the prefetched next one)
  offload (zero2 / fsdp): the sharded fp32 parameters, their gradients and Adam state live in host memory: the GPU
  keeps the gathered weights and one unit's gradients; `host` is 16/s bytes per parameter (not in the GPU total).
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
Pipeline parallelism (p = pp stages, parallel.pp_layout or the even split; megatron-core rank order tp-cp-ep-dp-pp):
  dp = world/(t*p), edp = world/(ep*etp*p), N = global_batch/(B*dp) micro-batches per step (the gradient
  accumulation steps; torch's Schedule1F1B needs N >= p). Every stage is planned on its own; the plan is the stage
  with the largest total (`stage`, `stage_totals`). Stage s holds its decoder layers' parameters; stage 0 also the
  embedding V*D/t, the last stage the final norm D and the head V*D/t (untied: pp > 1 refuses tied embeddings);
  weights, grads and optimizer state follow the sharding rules above with that stage's parameters (the groups are
  within a stage). Activations, 1F1B: stage s holds m_s = min(p - s, N) micro-batches in flight (stage 0 the most;
  a flush of parallel.pp_flush >= p micro-batches does not change that),
  each with its layers' activations plus, on the last stage, the `outside` terms (logits of one micro-batch: m = 1
  there) and, on the others, the stage output kept for backward, b = a*T*D/σ; with full recomputation m_s * (its
  layers' inputs + those ends) + one layer's activations. Boundary buffers (`pp_buffers`): torch 2.13's
  PipelineStage allocates receive buffers for all N micro-batches of a step up front (stage.py,
  _setup_forward_recv_info / _setup_backward_recv_info): on stage s > 0 N forward receive buffers of b bytes plus
  their N input gradients (.grad, kept until the next step), on s < p-1 N gradient receive buffers: N*b*(2*[s>0] +
  [s<p-1]). Approximated: the first layer's input on stage s > 0 is a receive buffer (counted in both terms,
  m_s*b too much); the p2p send side and the schedule's bookkeeping are not counted; the all-to-all buffers are
  counted on every stage of an MoE model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .config import Config
from .memory_layout import Layout, MemoryPlanError, apply_layout, check_layout, layout_from_config  # noqa: F401

GIB = 2 ** 30
GRAD_BUCKET_ELEMS = 2 ** 25  # training/grads.py BUCKET_ELEMS
STATE_BYTES = {  # per parameter: (weight, grad, master, adam m+v)
    "bf16": (2, 4, 4, 8),
    "fp32": (4, 4, 0, 8),
}


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
    host: float = 0.0
    """Host memory per GPU's process for offloaded state (not part of `total`)."""
    master_weights: float = 0.0
    """The part of `optimizer` that is fp32 master weights (FSDP2: the sharded parameters themselves)."""
    pp_buffers: float = 0.0
    """Pipeline receive buffers of the stage (module docstring); 0 without pipeline parallelism."""
    stage: int = 0
    """The pipeline stage this plan describes (plan_memory: the one with the largest total)."""
    stage_totals: tuple = ()
    """plan_memory: the total bytes of every stage, first to last."""

    @property
    def total(self) -> float:
        return (self.weights + self.grads + self.optimizer + self.activations + self.a2a_buffers + self.pp_buffers
                + self.overhead)

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


def stage_kinds(cfg: Config, layout: Layout, stage: int = 0) -> tuple[int, int]:
    """(MoE, dense) decoder layers of pipeline stage `stage` (all layers without pipeline parallelism)."""
    layers = layout.parallel().stage_range(cfg.model.num_layers, stage)
    n_moe = cfg.moe.count_moe_layers(layers)
    return n_moe, len(layers) - n_moe


def _ends_params(m, layout: Layout, stage: int) -> int:
    """Embedding, final norm and LM head parameters of one rank of `stage` (all of them at pp = 1)."""
    if layout.pp == 1:
        return _embedding_params(m) // layout.tp + m.hidden_size
    first, last = stage == 0, stage == layout.pp - 1
    return (first + last) * (m.vocab_size * m.hidden_size // layout.tp) + (m.hidden_size if last else 0)


def local_params(cfg: Config, layout: Layout, stage: int = 0) -> tuple[int, int]:
    """(dense, expert) parameters held by one rank of `layout` on pipeline stage `stage`."""
    m, moe = cfg.model, cfg.moe
    D, t = m.hidden_size, layout.tp
    n_moe, n_dense = stage_kinds(cfg, layout, stage)
    split, replicated = _attention_params(m)
    dense = (_ends_params(m, layout, stage) + (n_moe + n_dense) * (split // t + replicated)
             + n_dense * 3 * D * m.intermediate_size // t)
    expert = 0
    if moe.enabled:
        dense += n_moe * (_router_params(cfg) + 3 * D * _shared_ffn(cfg))
        expert = n_moe * (moe.num_experts // layout.ep) * 3 * D * (moe.ffn_size(m) // layout.etp)
    return dense, expert


def fsdp_units(cfg: Config, layout: Layout, stage: int = 0) -> tuple[int, int, int]:
    """(root, dense part, expert part of the largest decoder layer) parameters one rank of `stage` gathers under
    FSDP2 (parallel/fsdp.py's units): the root is what the stage holds outside its layers (embedding, final norm and
    head; none on a middle pipeline stage); a layer unit is its dense part (over dp) plus its experts (a unit of
    their own, over edp)."""
    m = cfg.model
    dense, expert = local_params(cfg, layout, stage)
    root = _ends_params(m, layout, stage)
    n_moe, n_dense = stage_kinds(cfg, layout, stage)
    split, replicated = _attention_params(m)
    dense_mlp_layer = split // layout.tp + replicated + 3 * m.hidden_size * m.intermediate_size // layout.tp
    layers = [(dense_mlp_layer, 0)] if n_dense else []
    if n_moe:
        moe_dense = (dense - root - n_dense * dense_mlp_layer) // n_moe
        layers.append((moe_dense, expert // n_moe))
    return (root, *max(layers, key=sum))


# ----------------------------------------------------------------------------------- activations
def _act_bytes(cfg: Config) -> int:
    return 4 if cfg.train.precision == "fp32" else 2  # auto means bf16 on the GPUs this plans for


def _norm_bytes(cfg: Config, layout: Layout) -> float:
    """What one eager RMSNorm (model/layers.py) keeps for backward: the fp32 copy of its input (the input itself
    in fp32) and the normalized x in the compute dtype, [B, S/σ, D] each."""
    sigma = layout.tp if layout.sp else 1
    return (4 + _act_bytes(cfg)) * cfg.data.seq_len * layout.micro_batch * cfg.model.hidden_size / sigma


def routed_rows(cfg: Config, layout: Layout) -> float:
    """P: the (token, expert) rows one rank sends to the experts per MoE layer, T_r*K*etp (its tokens' top-k
    choices, gathered over ETP); balanced routing delivers as many to each rank's experts."""
    sigma = layout.tp if layout.sp else 1
    return cfg.data.seq_len * layout.micro_batch / sigma * cfg.moe.top_k * layout.etp


def layer_activation_bytes(cfg: Config, layout: Layout, moe_layer: bool, rows: Optional[float] = None) -> float:
    """Bytes one decoder layer keeps for backward, one micro-batch, no recomputation (module docstring); `rows`:
    the rows this rank's experts receive (default: balanced routing, `routed_rows`)."""
    m, moe = cfg.model, cfg.moe
    a, D, t = _act_bytes(cfg), m.hidden_size, layout.tp
    sigma = t if layout.sp else 1
    T = cfg.data.seq_len * layout.micro_batch
    kv = m.kv_heads * m.head_width
    q = m.num_heads * m.head_width
    norm = _norm_bytes(cfg, layout)
    attn = norm + a * T * D + a * T * (q + 2 * kv) / t + a * T * q / t + 4 * T * m.num_heads / t
    mlp = norm
    if moe_layer:
        Tr, E = T / sigma, moe.num_experts
        P = routed_rows(cfg, layout)
        R = P if rows is None else rows
        F_l = moe.ffn_size(m) / layout.etp
        returned = a * P * D if layout.ep > 1 else 0.0  # the all-to-all's returned rows, kept by index_add
        mlp += (4 * Tr * D + 16 * Tr * E + 2 * a * R * D + 2 * a * R * F_l + returned)
        if moe.num_shared_experts:
            shared_in = 0.0 if (a == 4 and sigma == 1) else a * T * D  # fp32 without SP: the router's input
            mlp += shared_in + 4 * a * T * _shared_ffn(cfg) / t
    else:
        mlp += a * T * D + 4 * a * T * m.intermediate_size / t
    return attn + mlp


def moe_transient_bytes(cfg: Config, layout: Layout, rows: Optional[float] = None) -> float:
    """The largest forward temporary of an MoE layer beyond what it keeps: under EP the combine writes the
    expert output into a new [R, D] buffer (a copy and the buffer it fills, 2*a*R*D) before the returned rows
    (a*P*D) exist; without EP the combine's zero [T_r, D] sum and its result."""
    a, D = _act_bytes(cfg), cfg.model.hidden_size
    P = routed_rows(cfg, layout)
    R = P if rows is None else rows
    if layout.ep > 1:
        return 2 * a * R * D - a * P * D
    return 2 * a * P / cfg.moe.top_k * D


def micro_batches(cfg: Config, layout: Layout) -> int:
    """Micro-batches per step and data-parallel rank: global_batch / (micro_batch * dp)."""
    return cfg.train.global_batch_size // (layout.micro_batch * layout.dp)


def _boundary_bytes(cfg: Config, layout: Layout) -> float:
    """One activation at a stage boundary, [micro_batch, S/σ, D] in the compute dtype."""
    sigma = layout.tp if layout.sp else 1
    return _act_bytes(cfg) * cfg.data.seq_len * layout.micro_batch * cfg.model.hidden_size / sigma


def activation_bytes(cfg: Config, layout: Layout, stage: int = 0,
                     rows: Optional[list] = None) -> float:
    """Activation bytes of pipeline stage `stage` at its peak in forward: its in-flight micro-batches (one
    without pipeline parallelism) and the largest temporary on top (the logits turned into the loss on the last
    stage, an MoE layer's combine). `rows`: the rows this rank's experts receive in each MoE layer of the stage,
    in order (default: balanced routing)."""
    m = cfg.model
    a, D, t = _act_bytes(cfg), m.hidden_size, layout.tp
    sigma = t if layout.sp else 1
    T = cfg.data.seq_len * layout.micro_batch
    n_moe, n_dense = stage_kinds(cfg, layout, stage)
    rows = list(rows) if rows is not None else [None] * n_moe
    if len(rows) != n_moe:
        raise ValueError(f"activation_bytes: {len(rows)} row counts for {n_moe} MoE layers")
    in_flight = min(layout.pp - stage, micro_batches(cfg, layout))  # 1F1B
    peak = max((moe_transient_bytes(cfg, layout, r) for r in set(rows)), default=0.0)
    if stage == layout.pp - 1:  # final norm, head input; the logits, their fp32 copy and log-softmax
        ends = _norm_bytes(cfg, layout) + a * T * D
        peak = max(peak, (a + 4 + (4 if a != 4 else 0)) * T * m.vocab_size / t)
    else:  # the stage output, kept for its backward
        ends = _boundary_bytes(cfg, layout)
    per_rows = {r: layer_activation_bytes(cfg, layout, True, r) for r in set(rows)}  # one per distinct count
    per_moe = [per_rows[r] for r in rows]
    per_dense = layer_activation_bytes(cfg, layout, False) if n_dense else 0.0
    if layout.recompute:
        return in_flight * (ends + (n_moe + n_dense) * a * T * D / sigma) + max(per_moe + [per_dense]) + peak
    return in_flight * (ends + sum(per_moe) + n_dense * per_dense) + peak


def pipeline_buffer_bytes(cfg: Config, layout: Layout, stage: int = 0) -> float:
    """Receive buffers torch's PipelineStage allocates on `stage` for all micro-batches of a flush (a step's, or
    parallel.pp_flush): forward inputs and their gradients (stage > 0), output gradients (all but the last stage).
    Zero at pp = 1."""
    if layout.pp == 1:
        return 0.0
    n = 2 * (stage > 0) + (stage < layout.pp - 1)
    return (layout.pp_flush or micro_batches(cfg, layout)) * n * _boundary_bytes(cfg, layout)


def a2a_buffer_bytes(cfg: Config, layout: Layout, imbalance: float = 2.0) -> float:
    """Send + receive buffers of one token dispatch (zero without expert parallelism)."""
    if not cfg.moe.enabled or layout.ep * layout.etp == 1:
        return 0.0
    sigma = layout.tp if layout.sp else 1
    Tr = cfg.data.seq_len * layout.micro_batch / sigma
    return 2 * _act_bytes(cfg) * Tr * cfg.moe.top_k * layout.etp * cfg.model.hidden_size * imbalance


# ------------------------------------------------------------------------------------------ plan
def plan_memory(cfg: Config, layout: Layout, *, overhead_gib: float = 4.0, a2a_imbalance: float = 2.0,
                gathered_layers: int = 2, checked: bool = False) -> MemoryPlan:
    """Per-GPU bytes of `layout` for `cfg` (formulas in the module docstring): the pipeline stage with the largest
    total (the only one at pp = 1). `gathered_layers`: decoder-layer units fsdp holds gathered at once (2 on
    GPUs: the current one and the prefetched next; 1 where collectives do not overlap compute, as gloo on CPU).
    `checked`: the caller has already validated the layout (the search, which validates every candidate)."""
    if not checked:
        check_layout(cfg, layout)
    opts = dict(overhead_gib=overhead_gib, a2a_imbalance=a2a_imbalance, gathered_layers=gathered_layers)
    plans = [stage_plan(cfg, layout, stage, **opts) for stage in range(layout.pp)]
    worst = max(plans, key=lambda plan: plan.total)
    return dataclasses.replace(worst, stage_totals=tuple(plan.total for plan in plans))


def stage_plan(cfg: Config, layout: Layout, stage: int = 0, *, overhead_gib: float = 4.0,
               a2a_imbalance: float = 2.0, gathered_layers: int = 2) -> MemoryPlan:
    """Per-GPU bytes of one pipeline stage of `layout` (not validated: plan_memory checks the layout)."""
    w, g, master, adam = STATE_BYTES["fp32" if cfg.train.precision == "fp32" else "bf16"]
    dense, expert = local_params(cfg, layout, stage)
    sharded = dense / layout.dp + expert / layout.edp  # parameters per rank when sharded over dp / edp
    host = 0.0
    if layout.sharding in ("none", "zero1"):
        weights, grads = w * (dense + expert), g * (dense + expert)
        if layout.dp > 1 or layout.edp > 1:  # training/grads.py all-reduces through one flat fp32 bucket
            grads += g * min(GRAD_BUCKET_ELEMS, max(dense, expert))
        held = sharded if layout.sharding == "zero1" else dense + expert
        optimizer, master_weights = (master + adam) * held, master * held
    else:  # FSDP2: the sharded fp32 parameter is the master weight
        root, unit_dense, unit_expert = fsdp_units(cfg, layout, stage)
        # every unit computes with a gathered copy, also over a group of one (torch 2.13 copies the shard)
        if layout.sharding == "zero2":
            weights = w * (dense + expert)
        else:
            weights = w * (root + gathered_layers * (unit_dense + unit_expert))
        unit = max(root, unit_dense + unit_expert)
        grads, optimizer = (w + 4 if w != 4 else 4) * unit, 0.0  # fp32: no cast for the reduce
        master_weights = 0.0
        if layout.offload:
            host = (4 + 4 + 8) * sharded
        else:
            grads, optimizer, master_weights = grads + 4 * sharded, (4 + 8) * sharded, 4 * sharded
    return MemoryPlan(layout=layout, weights=float(weights), grads=float(grads), optimizer=float(optimizer),
                      activations=activation_bytes(cfg, layout, stage),
                      a2a_buffers=a2a_buffer_bytes(cfg, layout, a2a_imbalance), overhead=overhead_gib * GIB,
                      local_dense_params=dense, local_expert_params=expert, host=float(host),
                      master_weights=float(master_weights), pp_buffers=pipeline_buffer_bytes(cfg, layout, stage),
                      stage=stage)


# the search lives in memory_search.py; imported here so that `memory_plan` stays the one entry point
from .memory_search import SEARCHED_SHARDING, candidate_layouts, suggest_layout  # noqa: E402,F401
