"""Expert-load counts and heatmaps, MoE inspection (parameter counts by hand)."""
import json

import numpy as np
import torch

from _cli import run_cli
from _moe_helpers import ids, make_moe
from megatron_moe import load_model
from megatron_moe.analysis.inspect import inspect_checkpoint
from megatron_moe.analysis.plots import plot_expert_load
from megatron_moe.analysis.routing import expert_load, moe_layer_indices


def _counts_by_hand(model, batches):
    """Softmax-top-k routing recomputed from each MoE layer's input (captured before the layer) and its gate
    weight: top-k of x @ Wᵀ (the softmax is monotone), counted per expert."""
    E, K = model.moe_cfg.num_experts, model.moe_cfg.top_k
    layers = [model.layers[i].mlp for i in moe_layer_indices(model)]
    out = torch.zeros(len(layers), E, dtype=torch.float64)
    seen = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach()))
               for i, m in enumerate(layers)]
    with torch.no_grad():
        for b in batches:
            model(b)
            for i, m in enumerate(layers):
                logits = seen[i].reshape(-1, seen[i].shape[-1]) @ m.router.gate.weight.t()
                out[i] += torch.bincount(logits.topk(K, dim=-1).indices.flatten(), minlength=E).double()
    for h in handles:
        h.remove()
    return out


def test_expert_load_matches_independent_routing_and_plots(tmp_path):
    import matplotlib.image as mpimg

    from megatron_moe.analysis.plots import heatmap_data

    make_moe(tmp_path / "ck", router="softmax_topk", top_k=2, router_std=1.0)
    model = load_model(tmp_path / "ck")
    batches = [ids(2, 12, seed=s) for s in range(3)]
    counts = expert_load(model, batches)
    assert counts.shape == (2, 4) and torch.all(counts.sum(1) == 3 * 2 * 12 * 2)
    assert torch.equal(counts, _counts_by_hand(model, batches))
    assert counts.std() > 0  # a non-zero router does not route uniformly
    last = expert_load(model, batches[-1:])
    data = heatmap_data({"a": counts, "b": last}, moe_layer_indices(model))
    assert np.allclose(data["expert_load_a.png"][2], (counts / counts.sum(1, keepdim=True)).numpy())
    assert np.allclose(data["expert_load_layer_001.png"][2][1], (last[1] / last[1].sum()).numpy())
    paths = plot_expert_load({"a": counts, "b": last}, moe_layer_indices(model), tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(data)
    img_a, img_b = (mpimg.imread(tmp_path / "plots" / f"expert_load_{d}.png") for d in "ab")
    assert img_a.shape == img_b.shape and not np.array_equal(img_a, img_b)  # the data shows in the pixels


def test_inspect_moe_counts(tmp_path):
    make_moe(tmp_path / "ck", router="noisy_topk", top_k=1, num_shared_experts=1, moe_layers=[1])
    info = inspect_checkpoint(tmp_path / "ck")
    D, V, F, E = 32, 96, 16, 4
    attn = D * D * 2 + D * 16 * 2 + 2 * D  # wq, wo, wk, wv (kv 2 heads of 8), two norms
    dense = 3 * D * 64
    moe = 3 * E * D * F + 2 * E * D + 3 * D * F  # experts, gate + noise, shared
    total = 2 * V * D + D + 2 * attn + dense + moe
    assert info["params"]["total"] == total
    assert info["params"]["activated"] == total - 3 * D * F * 3  # 3 of 4 experts idle per token
    assert info["moe_layers"] == [1] and info["loadable"]["ep"] == [1, 2, 4]


def test_plot_routing_cli(tmp_path):
    from pathlib import Path

    from megatron_moe.data._mcore import IndexedDatasetBuilder

    make_moe(tmp_path / "run" / "ck", router="noisy_topk")
    rng = np.random.default_rng(0)
    prefixes = []
    for name in ("wiki", "code"):
        b = IndexedDatasetBuilder(str(tmp_path / f"{name}.bin"), dtype=np.uint16)
        for n in (40, 25):
            b.add_item(torch.tensor(rng.integers(0, 96, n), dtype=torch.int64))
            b.end_document()
        b.finalize(str(tmp_path / f"{name}.idx"))
        prefixes.append(f"{name}={tmp_path / name}")
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 4.0 / s}) for s in (1, 2, 3)))
    root = Path(__file__).resolve().parents[2]
    r = run_cli("tools/plot_routing.py", "--load", tmp_path / "run" / "ck", "--data", *prefixes, "--out",
                tmp_path / "out", "--metrics", tmp_path / "run" / "metrics.jsonl", "--seq-len", "16", "--batch-size",
                "2", cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["expert_load_code.png", "expert_load_layer_000.png", "expert_load_layer_001.png",
                    "expert_load_wiki.png", "loss_curve.png"]
    counts = json.loads((tmp_path / "out" / "expert_load.json").read_text())["counts"]
    assert np.array(counts["wiki"]).sum(1).tolist() == [3 * 16 * 2] * 2  # 65 tokens -> 3 windows of 17, top-2
