"""The rows of the reproduction: every expert-construction method of the paper, the upcycling variants, and the
techniques published after it, at one expert shape (budget.experts experts, top budget.top_k, score scale E/K,
the LLaMA-MoE noisy top-k gate with a linear gate network unless a row says otherwise).

Each row is (convert options, moe.* overrides for continual pre-training, data overrides). `dense` is the dense
base trained on the same extra tokens; `dynamic-sampling` is `random` with Sheared-LLaMA dynamic domain weights
(reference losses: the dense base's validation losses) instead of the static, size-proportional ones.
"""
from __future__ import annotations

from .budget import Budget

PAPER = ("random", "clustering-up", "clustering-gate", "co-activation", "gradient", "sharing-inner", "sharing-inter")
UPCYCLING = ("upcycle-g1", "upcycle-vg", "drop-upcycle")
LATER = ("router-kmeans", "router-expert-mean", "global-balance")
SAMPLING = ("dynamic-sampling",)
ROWS = ("dense",) + PAPER + UPCYCLING + LATER + SAMPLING
LOSSLESS = set(ROWS) - {"dense", "sharing-inner", "drop-upcycle"}
"""Rows whose split is lossless with every expert at weight 1 (sharing-inner and drop-upcycling are not, by design)."""
CALIBRATED = {"co-activation", "gradient", "sharing-inner", "sharing-inter", "router-kmeans"}


def shared_experts(b: Budget) -> int:
    """The fewest shared experts S with (E + S) dividing the FFN (Sharing-Inter's expert size F / (E + S))."""
    return next(s for s in range(1, b.ffn) if b.ffn % (b.experts + s) == 0)


def row(name: str, b: Budget) -> tuple[dict, dict, dict]:
    """(ConvertOptions kwargs, moe overrides, data overrides) of a row."""
    common = dict(num_experts=b.experts, top_k=b.top_k, router="noisy_topk", gate_network="linear", seed=b.seed)
    upcycle = dict(common, method="upcycle", router="softmax_topk")
    table = {
        "random": (dict(common, method="random"), {}, {}),
        "clustering-up": (dict(common, method="clustering", cluster_on="up"), {}, {}),
        "clustering-gate": (dict(common, method="clustering", cluster_on="gate"), {}, {}),
        "co-activation": (dict(common, method="co-activation"), {}, {}),
        "gradient": (dict(common, method="gradient"), {}, {}),
        "sharing-inner": (dict(common, method="sharing-inner"), {}, {}),
        "sharing-inter": (dict(common, method="sharing-inter", num_shared_experts=shared_experts(b)), {}, {}),
        "upcycle-g1": (dict(upcycle, granularity=1), {}, {}),
        "upcycle-vg": (dict(upcycle, granularity=b.top_k, virtual_groups=True, weight_scaling=True), {}, {}),
        "drop-upcycle": (dict(upcycle, granularity=b.top_k, virtual_groups=True, weight_scaling=True,
                              drop_ratio=0.5), {}, {}),
        "router-kmeans": (dict(common, method="random", router_init="kmeans"), {}, {}),
        "router-expert-mean": (dict(common, method="random", router_init="expert-mean"), {}, {}),
        "global-balance": (dict(common, method="random"), {"balance_scope": "global"}, {}),
        "dynamic-sampling": (dict(common, method="random"), {}, {"sampling": "dynamic"}),
    }
    if name not in table:
        raise KeyError(f"unknown reproduction row {name!r}; rows: {', '.join(ROWS)}")
    return table[name]
