"""Dense LLaMA-family model -> MoE checkpoint (LLaMA-MoE stage 1), streamed one decoder layer at a time.

    result = convert_dense_to_moe("llama-2-7b-hf", "moe-ckpt", ConvertOptions(num_experts=16, top_k=4))
    delta = verify_conversion("llama-2-7b-hf", "moe-ckpt")        # max |logit delta|, all experts, weight 1

The output is a checkpoint of this project (docs/checkpoint_format.md): config.json (model + moe),
model/ with parts embed, layer_NNN, final, and construction.json (method, seed, options, per-layer
neuron assignment). It is written under a temporary name and renamed when complete.

Routers start as LLaMA-MoE's: the linear gate and the noise projection are zero (every expert scores
the same at step 0); gate_network=mlp gets a seeded N(0, init_std) first Linear and a zero second Linear,
so its output is zero too but its gradient is not; the sigmoid router's expert bias is zero.

Legend: D hidden, F dense FFN width, E experts, F_e neurons per expert, Fs shared neurons.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import CheckpointWriter, config_dict
from ..checkpoint.store import copy_tokenizer
from ..config import ModelConfig, MoEConfig, ParallelConfig
from ..dtypes import DTYPES
from ..errors import UserError
from . import calibration as calib
from .dense import detect_format, open_dense
from .partition.upcycle import drop_upcycle, scale_swiglu, upcycle_scale
from .partition import (DATA_DRIVEN, METHODS, build_expert_weights, build_shared_weights, clustering_partition,
                        coactivation_partition, gradient_partition, random_partition, sharing_inner_partition,
                        sharing_inter_partition, upcycle_partition)

log = logging.getLogger(__name__)


class ConstructionError(UserError):
    """A conversion request that cannot run (bad option combination); one line naming the values."""


@dataclass
class ConvertOptions:
    num_experts: int = 16
    top_k: int = 4
    method: str = "random"
    router: str = "noisy_topk"
    gate_network: str = "linear"
    score_scale: Optional[float] = None
    num_shared_experts: int = 0
    seed: int = 1227
    cluster_on: str = "up"          # clustering: rows of W_up (w3) or W_gate (w1)
    metric: str = "l2"              # clustering: l2 | cosine
    n_init: int = 3                 # clustering: k-means restarts
    granularity: int = 1            # upcycle: FFN slices g
    virtual_groups: bool = False    # upcycle: expert e holds shard e mod g; router rows shared per group of g
    weight_scaling: bool = False    # upcycle with virtual groups: scale experts so the layer starts equal to dense
    drop_ratio: float = 0.0         # upcycle: Drop-Upcycling, re-initialise this fraction of each expert's neurons
    router_init: str = "zero"       # zero (LLaMA-MoE) | kmeans (LLaMA-MoE v2, needs calib data) | expert-mean
    coact_fn: str = "abs"           # co-activation: abs | square | identity
    coact_threshold: float = 0.0    # co-activation: drop edges <= threshold
    calib_data: list = field(default_factory=list)
    calib_tokens: int = 8192
    calib_seq_len: int = 512
    calib_batch: int = 4
    tokenizer: Optional[str] = None
    tp: int = 1
    ep: int = 1
    dtype: Optional[str] = None     # bf16 | fp16 | fp32; None keeps the dense checkpoint's dtype
    ignore_fields: list = field(default_factory=list)  # config.json fields accepted although unknown


@dataclass
class ConvertResult:
    path: Path
    moe: MoEConfig
    seconds: float
    assignments: dict


def build_moe_config(model: ModelConfig, o: ConvertOptions) -> MoEConfig:
    """The MoE section for this conversion, validated (ConstructionError / ConfigError on bad input)."""
    if o.method not in METHODS:
        raise ConstructionError(f"unknown method {o.method!r}; choose one of {', '.join(METHODS)}")
    if o.dtype is not None and o.dtype not in DTYPES:
        raise ConstructionError(f"--dtype {o.dtype!r} is not one of {', '.join(DTYPES)}")
    E, S, F = o.num_experts, o.num_shared_experts, model.intermediate_size
    if E < 1:
        raise ConstructionError(f"num_experts={E} must be >= 1")
    if not 1 <= o.top_k <= E:
        raise ConstructionError(f"top_k={o.top_k} must be between 1 and num_experts={E}")
    if S and o.method != "sharing-inter":
        raise ConstructionError(f"--num-shared-experts={S} is only used by --method sharing-inter")
    if o.method == "sharing-inter":
        if S < 1:
            raise ConstructionError("--method sharing-inter needs --num-shared-experts >= 1")
        if F % (E + S):
            raise ConstructionError(f"FFN size {F} is not divisible by num_experts + num_shared_experts = {E + S}")
        size = F // (E + S)
    elif o.method == "upcycle":
        if o.granularity < 1 or E % o.granularity or F % o.granularity:
            raise ConstructionError(f"granularity={o.granularity} must divide num_experts={E} and FFN size {F}")
        size = F // o.granularity
    else:
        if F % E:
            raise ConstructionError(f"FFN size {F} is not divisible by num_experts={E}")
        size = F // E
    if o.method in DATA_DRIVEN and not o.calib_data:
        raise ConstructionError(f"--method {o.method} needs calibration data (--calib-data PATH ...)")
    _check_refinements(o)
    moe = MoEConfig(num_experts=E, top_k=o.top_k, expert_ffn_size=size, router=o.router,
                    gate_network=o.gate_network, score_scale=o.score_scale, num_shared_experts=S,
                    shared_expert_ffn_size=size if S else None)
    moe.validate(model)
    ParallelConfig(tp=o.tp, ep=o.ep).validate(o.tp * o.ep, model, moe)
    return moe


def _check_refinements(o: ConvertOptions) -> None:
    """The upcycling refinements and router initialisations: valid combinations only (one line otherwise)."""
    from .router_init import ROUTER_INITS

    upcycle_only = [f for f, on in (("--virtual-groups", o.virtual_groups), ("--weight-scaling", o.weight_scaling),
                                    ("--drop-ratio", o.drop_ratio != 0.0)) if on]
    if upcycle_only and o.method != "upcycle":
        raise ConstructionError(f"{upcycle_only[0]} is for --method upcycle, not {o.method}")
    if o.weight_scaling and not o.virtual_groups:
        raise ConstructionError("--weight-scaling makes the layer start equal to the dense one only with "
                                "--virtual-groups (whole copies are selected together)")
    if o.weight_scaling and (o.top_k % o.granularity or o.router not in ("softmax_topk", "noisy_topk", "sigmoid")):
        raise ConstructionError(f"--weight-scaling needs top_k={o.top_k} divisible by granularity={o.granularity} "
                                f"and a renormalising router")
    if not 0 <= o.drop_ratio <= 1:
        raise ConstructionError(f"--drop-ratio={o.drop_ratio} must be in [0, 1]")
    if o.router_init not in ROUTER_INITS:
        raise ConstructionError(f"--router-init {o.router_init!r} is not one of {', '.join(ROUTER_INITS)}")
    if o.router_init != "zero" and (o.gate_network != "linear" or o.virtual_groups):
        raise ConstructionError(f"--router-init {o.router_init} sets the rows of a linear gate network; "
                                f"it does not combine with --gate-network mlp or --virtual-groups")
    if o.router_init == "kmeans" and not o.calib_data:
        raise ConstructionError("--router-init kmeans needs calibration data (--calib-data PATH ...)")


def router_tensors(prefix: str, moe: MoEConfig, D: int, gen: torch.Generator, init_std: float,
                   gate_rows_ED: Optional[torch.Tensor] = None) -> dict:
    """The router of one MoE layer at step 0: LLaMA-MoE's zero gate unless `gate_rows_ED` are given."""
    E = moe.num_experts
    out = {}
    if moe.gate_network == "mlp":
        out[prefix + "router.gate.0.weight"] = torch.randn(E, D, generator=gen) * init_std
        out[prefix + "router.gate.2.weight"] = torch.zeros(E, E)
    else:
        out[prefix + "router.gate.weight"] = torch.zeros(E, D) if gate_rows_ED is None else gate_rows_ED
    if moe.router == "noisy_topk":
        out[prefix + "router.noise.weight"] = torch.zeros(E, D)
    if moe.router == "sigmoid":
        out[prefix + "router.expert_bias"] = torch.zeros(E)
    return out


def _release(reader) -> None:
    """Drop the reader's open shard handles (HF shards are memory-mapped; Meta shards load whole)."""
    if hasattr(reader, "release"):
        reader.release()


def _layer_seed(seed: int, layer: int) -> int:
    return (seed * 1_000_003 + layer) % (2 ** 63)


class _Assigner:
    """Per-layer assignments; data-driven methods run their calibration pass here (streamed)."""

    def __init__(self, reader, o: ConvertOptions, moe: MoEConfig, progress: bool):
        self.o, self.moe, self.reader, self.info = o, moe, reader, {}
        cfg = reader.config
        if o.method in DATA_DRIVEN or o.router_init == "kmeans":
            tok = o.tokenizer or next((str(Path(reader.path) / f) for f in ("tokenizer.model", "tokenizer.json")
                                       if (Path(reader.path) / f).is_file()), None)
            tokens = calib.load_calibration_tokens(o.calib_data, o.calib_tokens, min(o.calib_seq_len, cfg.max_seq_len),
                                                   tok, cfg.vocab_size)
            self.info["calibration"] = {"sequences": tokens.shape[0], "seq_len": tokens.shape[1]}
            if o.method == "co-activation":
                self.stream = calib.coactivation_stream(reader, tokens, o.coact_fn, o.calib_batch, progress)
            elif o.method in DATA_DRIVEN:
                self.importance, clusters = calib.gradient_importance(reader, tokens, o.num_experts, o.seed,
                                                                      o.calib_batch, progress)
                self.info["calibration"]["sequence_clusters"] = clusters.tolist()
            if o.router_init == "kmeans":
                self.router_inputs = calib.mlp_inputs(reader, tokens, o.calib_batch, progress)

    def gate_rows(self, i: int, w1_FD, w3_FD, routed_EF, gen) -> Optional[torch.Tensor]:
        """Step-0 rows of a linear gate for layer i (None: the zero gate)."""
        from .partition.upcycle import shared_router_rows
        from .router_init import expert_mean_router, kmeans_router

        o, D = self.o, w1_FD.shape[1]
        if o.virtual_groups:
            return shared_router_rows(o.num_experts, o.granularity, D, gen, self.reader.config.init_std)
        if o.router_init == "kmeans":
            return kmeans_router(self.router_inputs[i], w1_FD, w3_FD, routed_EF, _layer_seed(o.seed, i))
        if o.router_init == "expert-mean":
            return expert_mean_router(w1_FD, routed_EF)
        return None

    def __call__(self, i: int, w1_FD: torch.Tensor, w3_FD: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        o, E, F = self.o, self.o.num_experts, w1_FD.shape[0]
        seed = _layer_seed(o.seed, i)
        if o.method == "random":
            return random_partition(F, E, seed), None
        if o.method == "clustering":
            return clustering_partition(w3_FD if o.cluster_on == "up" else w1_FD, E, o.metric, seed, o.n_init), None
        if o.method == "upcycle":
            return upcycle_partition(F, E, o.granularity, o.virtual_groups), None
        if o.method == "co-activation":
            layer, A_FF = next(self.stream)
            assert layer == i, f"co-activation stream at layer {layer}, conversion at {i}"
            return coactivation_partition(A_FF, E, o.coact_threshold, seed), None
        imp = self.importance[i]
        if o.method == "gradient":
            return gradient_partition(imp, E), None
        if o.method == "sharing-inner":
            return sharing_inner_partition(imp, self.moe.expert_ffn_size), None
        return sharing_inter_partition(imp, self.moe.expert_ffn_size, F - E * self.moe.expert_ffn_size)


def convert_dense_to_moe(load: str | Path, save: str | Path, o: ConvertOptions, progress: bool = True) -> ConvertResult:
    """Stream the dense checkpoint at `load` into an MoE checkpoint at `save` (see the module doc)."""
    t0 = time.perf_counter()
    if o.cluster_on not in ("up", "gate"):
        raise ConstructionError(f"--cluster-on {o.cluster_on!r} is not one of up, gate")
    if Path(save).exists():
        raise ConstructionError(f"{save} already exists; choose another --save or remove it")
    reader = open_dense(load, o.ignore_fields)
    cfg = reader.config
    moe = build_moe_config(cfg, o)
    out_dtype = DTYPES[o.dtype] if o.dtype else None
    cast = (lambda t: t.to(out_dtype)) if out_dtype else (lambda t: t)  # noqa: E731
    assigner = _Assigner(reader, o, moe, progress)
    gen = torch.Generator().manual_seed(o.seed)
    record = {"method": o.method, "seed": o.seed, "options": dataclasses.asdict(o), "source": str(load),
              "source_format": detect_format(load), "layers": {}}
    assignments = {}
    extra = {"construction": {"method": o.method, "seed": o.seed, "source": str(load)}}
    with CheckpointWriter(save, config_dict(cfg, moe, extra), background=True) as w:
        w.add_part("embed", {"embed.weight": cast(reader.get("embed.weight"))})
        _release(reader)
        for i in tqdm(range(cfg.num_layers), desc=f"convert ({o.method})", unit="layer", disable=not progress):
            p = f"layers.{i}."
            part = {n: cast(reader.get(n)) for n in reader.names() if n.startswith(p) and ".mlp." not in n}
            w1, w3, w2 = (reader.get(p + f"mlp.{k}.weight") for k in ("w1", "w3", "w2"))
            if moe.is_moe_layer(i):
                routed, shared = assigner(i, w1, w3)
                e1, e3, e2 = build_expert_weights(w1, w3, w2, routed)
                layer_info = {}
                if o.weight_scaling:
                    e1, e3, e2 = scale_swiglu(e1, e3, e2, upcycle_scale(o.granularity, moe.scale))
                if o.drop_ratio:
                    e1, e3, e2, dropped = drop_upcycle(e1, e3, e2, o.drop_ratio, _layer_seed(o.seed + 1, i),
                                                       (w1, w3, w2))
                    layer_info["dropped"] = dropped.tolist()
                part.update({p + "mlp.experts.w1": cast(e1), p + "mlp.experts.w3": cast(e3),
                             p + "mlp.experts.w2": cast(e2)})
                if shared is not None:
                    s1, s3, s2 = build_shared_weights(w1, w3, w2, shared)
                    part.update({p + "mlp.shared.w1.weight": cast(s1), p + "mlp.shared.w3.weight": cast(s3),
                                 p + "mlp.shared.w2.weight": cast(s2)})
                rows = assigner.gate_rows(i, w1, w3, routed, gen)
                router = router_tensors(p + "mlp.", moe, cfg.hidden_size, gen, cfg.init_std, rows)
                part.update({k: cast(v) if v.is_floating_point() else v for k, v in router.items()})
                record["layers"][str(i)] = {"experts": routed.tolist(), **layer_info,
                                            **({"shared": shared.tolist()} if shared is not None else {})}
                assignments[i] = (routed, shared)
            else:
                part.update({p + f"mlp.{k}.weight": cast(t) for k, t in (("w1", w1), ("w3", w3), ("w2", w2))})
            del w1, w3, w2
            _release(reader)  # before writing: the shard's mapped pages are not needed any more
            w.add_part(f"layer_{i:03d}", part)
            del part
        w.add_part("final", {n: cast(reader.get(n)) for n in ("norm.weight", "lm_head.weight") if n in reader.names()})
        record.update(assigner.info)
        w.write_json("construction.json", record)
        copy_tokenizer(load, w)
    seconds = time.perf_counter() - t0
    log.debug("converted %s -> %s (%s, %d experts) in %.1f s", load, save, o.method, o.num_experts, seconds)
    return ConvertResult(Path(save), moe, seconds, assignments)


# ------------------------------------------------------------------------------------------ verify
@torch.no_grad()
def verify_conversion(load: str | Path, save: str | Path, seed: int = 0, batch: int = 2, seq_len: int = 32,
                      ignore_fields=()) -> float:
    """Max |logit delta| between the dense model at `load` and the converted MoE at `save`, every expert selected
    at routing weight 1 (`force_all_experts`; upcycled experts' w2 scaled by g/E, as E/g copies of each slice
    would otherwise add up), in fp32 on the stored weights (the dense side rounded to the MoE checkpoint's dtype
    first, so the delta measures the construction only). Runs the model's own decoder layers one at a time
    (construct/layerwise.py), so it fits in memory for 7B-class checkpoints."""

    from ..checkpoint import read_config
    from ..checkpoint.store import PartReader
    from .layerwise import LayerStream, build_layer

    dense = open_dense(load, ignore_fields)
    cfg = dense.config
    model_cfg, moe, _ = read_config(save)
    moe_parts = PartReader(save)
    dtype = moe_parts.get("embed.weight").dtype
    from ..errors import CheckpointError
    from ..structured import read_json

    record = read_json(Path(save) / "construction.json", expect=dict, error=CheckpointError)
    opts = record["options"]
    if record["method"] == "sharing-inner" or opts.get("drop_ratio"):
        log.warning("%s re-initialises or drops neurons by design; the delta is a deviation, not an error",
                    "drop-upcycling" if opts.get("drop_ratio") else "sharing-inner")
    w2_scale = opts["granularity"] / moe.num_experts if record["method"] == "upcycle" else 1.0
    if opts.get("weight_scaling"):
        w2_scale /= upcycle_scale(opts["granularity"], moe.scale)

    def dense_get(name):  # the dense weights as the MoE checkpoint stores them
        return dense.get(name).to(dtype).float()

    S = min(seq_len, cfg.seq_limit)
    ids = torch.randint(0, cfg.vocab_size, (batch, S), generator=torch.Generator().manual_seed(seed))
    ref, got = LayerStream(dense), LayerStream(moe_parts, moe, config=model_cfg)
    cos_sin = ref.rope(S)
    x_dense, x_moe = F.embedding(ids, dense_get("embed.weight")), got.embed(ids).float()
    for i in range(cfg.num_layers):
        x_dense = build_layer(i, cfg, MoEConfig(), dense_get)(x_dense, *cos_sin)
        layer = build_layer(i, model_cfg, moe, lambda n: moe_parts.get(n).float())
        if moe.is_moe_layer(i):
            layer.mlp.force_all_experts = True
            layer.mlp.experts.w2.mul_(w2_scale)
        x_moe = layer(x_moe, *cos_sin)
        _release(dense)
    logits_dense = F.linear(ref.final_norm(x_dense), dense_get("embed.weight" if cfg.tie_embeddings
                                                               else "lm_head.weight"))
    logits_moe = got.head(x_moe)
    return float((logits_dense - logits_moe.float()).abs().max())
