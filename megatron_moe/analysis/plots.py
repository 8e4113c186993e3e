"""PNG figures (matplotlib, Agg backend): expert-load heatmaps (the LLaMA-MoE gate-load figure) and loss curves.

    plot_expert_load({"wiki": counts_LE, "code": counts_LE}, layer_ids, "out/")   # -> list of PNG paths
    plot_loss_curve("runs/x/metrics.jsonl", "out/loss_curve.png")
Load is shown as the fraction of routed tokens per expert (rows sum to 1); uniform load is 1/E.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from ..structured import StructuredFileError, parse_json


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from ..atomic import atomic_file

    with atomic_file(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    return path


def load_fractions(counts_LE: torch.Tensor) -> torch.Tensor:
    return counts_LE / counts_LE.sum(-1, keepdim=True).clamp(min=1)


def heatmap_data(loads: dict[str, torch.Tensor], layer_ids: Sequence[int]) -> dict[str, tuple]:
    """What plot_expert_load draws: {png name: (title, row labels, fractions [rows, E])}: one heatmap per domain
    (layers x experts) and one per layer (domains x experts)."""
    fracs = {d: load_fractions(c).numpy() for d, c in loads.items()}
    E = next(iter(fracs.values())).shape[1]
    out = {}
    for dom, f_LE in fracs.items():
        out[f"expert_load_{_safe(dom)}.png"] = (f"expert load: {dom} (uniform = {1 / E:.3f})",
                                                [str(i) for i in layer_ids], f_LE)
    names = list(fracs)
    for row, layer in enumerate(layer_ids):
        out[f"expert_load_layer_{layer:03d}.png"] = (f"layer {layer}: expert load per domain", names,
                                                     np.stack([fracs[d][row] for d in names]))
    return out


def plot_expert_load(loads: dict[str, torch.Tensor], layer_ids: Sequence[int], out_dir: str | Path) -> list[Path]:
    """Draw `heatmap_data` (one PNG each) into out_dir; returns the paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = heatmap_data(loads, layer_ids)
    vmax = max(float(m.max()) for _, _, m in data.values())
    paths = []
    for name, (title, rows, matrix) in data.items():
        E = matrix.shape[1]
        fig, ax = plt.subplots(figsize=(max(4, 0.4 * E + 2), max(2.5, 0.35 * len(rows) + 1.5)))
        im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set(xlabel="expert", ylabel="domain" if name.startswith("expert_load_layer") else "layer",
               title=title)
        ax.set_yticks(range(len(rows)), rows)
        fig.colorbar(im, ax=ax, label="fraction of routed tokens")
        paths.append(_save(fig, out / name))
        plt.close(fig)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def read_metrics(path: str | Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(train [(step, loss)], valid {domain: [(step, loss)]}) from metrics.jsonl; bad lines are skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise UserError(f"{p}: no metrics.jsonl")
    train, valid = [], {}
    for line in p.read_text().splitlines():
        try:
            rec = parse_json(line, str(p), expect=dict, error=StructuredFileError)
        except StructuredFileError:
            continue  # a line cut by a crash
        step = rec.get("step")
        if step is None:
            continue
        if isinstance(rec.get("loss"), (int, float)) and math.isfinite(rec["loss"]):
            train.append((int(step), float(rec["loss"])))
        for dom, v in (rec.get("valid_loss") or {}).items():
            if isinstance(v, (int, float)):
                valid.setdefault(dom, []).append((int(step), float(v)))
    if not train and not valid:
        raise UserError(f"{p}: no loss records")
    return train, valid


def plot_loss_curve(metrics: str | Path, out_png: str | Path) -> Path:
    plt = _plt()
    train, valid = read_metrics(metrics)
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    for dom, pts in sorted(valid.items()):
        ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=f"valid {dom}")
    ax.set(xlabel="step", ylabel="loss", title="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, out)
    plt.close(fig)
    return out
