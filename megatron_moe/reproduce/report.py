"""The reproduction's outputs: results.json, the CPT loss curves of every row on one axis, the expert load of
every MoE row, and a Markdown report whose every number comes from results.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..data.local_corpus import LOCAL_DOMAINS
from .base import ppl
from .downstream import markdown as downstream_markdown


def _smooth(ys: list, width: int) -> list:
    out, acc = [], []
    for y in ys:
        acc.append(y)
        acc = acc[-width:]
        out.append(sum(acc) / len(acc))
    return out


def plot_curves(rows: list[dict], path: Path) -> Path:
    from ..analysis.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in rows:
        steps, losses = zip(*r["curve"]) if r["curve"] else ((), ())
        width = max(1, len(losses) // 10)
        ax.plot(steps, _smooth(list(losses), width), lw=2.0 if r["row"] in ("dense", "random") else 1.0,
                ls="--" if r["row"] == "dense" else "-", label=r["row"])
    ax.set(xlabel="continual pre-training step", ylabel="training loss (moving average)",
           title="continual pre-training from the same dense base, same tokens and order")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_load(rows: list[dict], path: Path) -> Path:
    import numpy as np

    from ..analysis.plots import _plt, _save

    plt = _plt()
    moe = [r for r in rows if "load_sorted" in r]
    width = max(len(r["load_sorted"]) for r in moe)
    grid = np.full((len(moe), width), np.nan)
    for i, r in enumerate(moe):
        grid[i, :len(r["load_sorted"])] = r["load_sorted"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(moe) + 1.5))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(moe)), [f"{r['row']} (MaxVio {r['max_vio']:.2f})" for r in moe])
    ax.set(xlabel="expert, busiest first", title="expert load after continual pre-training (validation data, "
           "mean over layers; uniform = 1/E)")
    fig.colorbar(im, ax=ax, label="fraction of routed tokens")
    _save(fig, path)
    plt.close(fig)
    return path


def _cell(x: float, fmt: str = "{:.2f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def markdown(res: dict) -> str:
    b, env = res["budget"], res["environment"]
    doms = list(LOCAL_DOMAINS)
    head = " | ".join(f"{d} ppl" for d in doms)
    lines = [
        f"Run: `python -m megatron_moe.reproduce --budget {b['name']}` at commit {env['commit']}, {env['date']}, "
        f"{env['machine']}, torch {env['torch']}, {env['threads']} threads; {res['total_minutes']:.1f} min in all.",
        "",
        f"Dense base: {res['base']['params'] / 1e6:.2f}M parameters ({b['hidden']} hidden, {b['layers']} layers, "
        f"FFN {b['ffn']}, vocabulary {b['vocab']}), pretrained from scratch for {b['pretrain_steps']} steps of "
        f"{b['batch']} x {b['seq_len']} tokens ({b['pretrain_steps'] * b['batch'] * b['seq_len'] / 1e6:.2f}M tokens). "
        f"Every row then continues for {b['cpt_steps']} steps ({b['cpt_steps'] * b['batch'] * b['seq_len'] / 1e6:.2f}M "
        f"tokens, lr {b['cpt_lr']}), same data order.",
        "",
        f"| model | {head} |", "| --- | " + " | ".join("---" for _ in doms) + " |",
        "| unigram (per domain) | " + " | ".join(_cell(ppl(res['unigram'][d]), "{:.1f}") for d in doms) + " |",
        "| dense base | " + " | ".join(_cell(ppl(res['base']['valid'][d]), "{:.1f}") for d in doms) + " |",
        "",
        f"| row | experts x F_e | activated / total | build s | verify Δ | after split: {head} | after CPT: {head} | "
        "CPT mean ppl | MaxVio | CV |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in doms) + " | " +
        " | ".join("---" for _ in doms) + " | --- | --- | --- |",
    ]
    for r in res["rows"]:
        shape = f"{r['experts']} x {r['expert_ffn']}" if r["experts"] else "dense"
        mean = math.exp(sum(r["cpt_loss"][d] for d in doms) / len(doms))
        lines.append(
            f"| {r['row']} | {shape} | {r['activated_params'] / 1e6:.2f}M / {r['total_params'] / 1e6:.2f}M | "
            f"{_cell(r['construction_s'], '{:.1f}')} | {_cell(r['verify_delta'], '{:.0e}')} | "
            + " | ".join(_cell(ppl(r['split_loss'][d]), "{:.1f}") for d in doms) + " | "
            + " | ".join(_cell(ppl(r['cpt_loss'][d]), "{:.1f}") for d in doms)
            + f" | {mean:.2f} | {_cell(r.get('max_vio'))} | {_cell(r.get('cv'))} |")
    extra = downstream_markdown(res)
    return "\n".join(lines) + "\n" + ("\n" + extra if extra else "")


def write(res: dict, out: Path) -> dict:
    out = Path(out)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    plot_curves(res["rows"], out / "cpt_curves.png")
    plot_load(res["rows"], out / "expert_load.png")
    (out / "report.md").write_text(markdown(res))
    return res
