"""What a checkpoint holds, from its metadata only (no tensor is read): config, parameter counts (total and
activated per token), storage/layout, construction method and seed, training progress."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import read_index, resolve
from ..checkpoint.store import part_metadata
from ..structured import StructuredFileError, read_json


def tensor_shapes(ckpt: Path) -> dict[str, tuple]:
    shapes = {}
    for part in read_index(ckpt)["parts"]:
        shapes.update({k: v[0] for k, v in part_metadata(ckpt / "model" / part).items()})
    return shapes


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def parameter_counts(shapes: dict[str, tuple], num_experts: int, top_k: int) -> dict[str, int]:
    """total, activated (routed experts count k/E), embedding (embed + lm_head), routed experts, router."""
    total = sum(_numel(s) for n, s in shapes.items() if not n.endswith("expert_bias"))
    experts = sum(_numel(s) for n, s in shapes.items() if ".mlp.experts." in n)
    router = sum(_numel(s) for n, s in shapes.items() if ".mlp.router." in n and not n.endswith("expert_bias"))
    embedding = sum(_numel(s) for n, s in shapes.items() if n in ("embed.weight", "lm_head.weight"))
    inactive = experts * (num_experts - top_k) // num_experts if num_experts else 0
    return {"total": total, "activated": total - inactive, "embedding": embedding, "routed_experts": experts,
            "router": router}


def inspect_checkpoint(path: str | Path) -> dict:
    from ..checkpoint.verify import verify_checkpoint

    ckpt = resolve(path)
    model_cfg, moe_cfg, raw = verify_checkpoint(ckpt)  # a config.json that contradicts the tensors is refused
    index = read_index(ckpt)
    shapes = tensor_shapes(ckpt)
    E = moe_cfg.num_experts
    info = {"path": str(ckpt), "model": raw["model"], "moe": raw.get("moe") or {},
            "params": parameter_counts(shapes, E, moe_cfg.top_k if E else 0),
            "storage": {"parts": len(index["parts"]), "tensors": len(shapes), "dtype": index.get("dtype"),
                        "bytes_on_disk": sum(f.stat().st_size for f in (ckpt / "model").rglob("*") if f.is_file()),
                        "layout": "layout-independent (canonical global tensors); loads at any tp/ep below"},
            "loadable": {"tp": [t for t in range(1, model_cfg.num_heads + 1) if model_cfg.num_heads % t == 0
                                and model_cfg.kv_heads % t == 0 and model_cfg.vocab_size % t == 0
                                and model_cfg.intermediate_size % t == 0],
                         "ep": [e for e in range(1, E + 1) if E % e == 0] if E else [1]},
            "moe_layers": [i for i in range(model_cfg.num_layers) if moe_cfg.is_moe_layer(i)]}
    for key in ("source", "imported_from", "resharded_from"):
        if key in raw:
            info[key] = raw[key]
    cons = ckpt / "construction.json"
    if cons.is_file():
        try:
            c = read_json(cons, expect=dict, error=StructuredFileError)
            info["construction"] = {k: v for k, v in c.items() if not isinstance(v, (list, dict))}
        except StructuredFileError as err:
            info["construction"] = {"error": str(err)}
    state = ckpt / "trainer_state.json"
    if state.is_file():
        try:
            s = read_json(state, expect=dict, error=StructuredFileError, max_nodes=50_000_000)
            info["training"] = {k: s[k] for k in ("step", "consumed_tokens", "parallel", "layout") if k in s}
        except StructuredFileError as err:
            info["training"] = {"error": str(err)}
    info["has_optimizer"] = (ckpt / "optimizer").is_dir()
    return info


def _fmt_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_report(info: dict) -> str:
    m, moe, p, st = info["model"], info["moe"], info["params"], info["storage"]
    lines = [f"checkpoint: {info['path']}",
             f"model: {m['num_layers']} layers, hidden {m['hidden_size']}, heads {m['num_heads']}"
             f" (kv {m.get('num_kv_heads') or m['num_heads']}), ffn {m['intermediate_size']}, vocab {m['vocab_size']}"]
    if moe.get("num_experts"):
        lines.append(f"moe: {moe['num_experts']} experts, top-{moe['top_k']}, router {moe['router']}"
                     f" (gate {moe['gate_network']}), score scale {moe.get('score_scale') or moe['num_experts'] / moe['top_k']:g}, "
                     f"shared experts {moe.get('num_shared_experts', 0)}, MoE layers {len(info['moe_layers'])}")
    else:
        lines.append("moe: none (dense)")
    lines.append(f"parameters: total {_fmt_params(p['total'])} ({p['total']:,}), activated {_fmt_params(p['activated'])}"
                 f" ({p['activated']:,}), embeddings {_fmt_params(p['embedding'])}, routed experts "
                 f"{_fmt_params(p['routed_experts'])}, routers {_fmt_params(p['router'])}")
    lines.append(f"storage: {st['parts']} parts, {st['tensors']} tensors, {st['dtype']}, "
                 f"{st['bytes_on_disk'] / 2**20:.1f} MiB; {st['layout']}")
    lines.append(f"loadable at: tp in {info['loadable']['tp']}, ep in {info['loadable']['ep']}")
    c = info.get("construction")
    lines.append("construction: " + (", ".join(f"{k}={v}" for k, v in c.items()) if c else "none (not a converted checkpoint)"))
    for key in ("source", "imported_from", "resharded_from"):
        if key in info:
            lines.append(f"{key}: {info[key]}")
    if "training" in info:
        lines.append("training: " + ", ".join(f"{k}={v}" for k, v in info["training"].items()))
    lines.append(f"optimizer state: {'yes' if info['has_optimizer'] else 'no'}")
    return "\n".join(lines)
