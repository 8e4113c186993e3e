"""Named domain weights and reference losses (LLaMA-MoE / Sheared-LLaMA, SlimPajama's 7 domains).

Configured domain names are mapped onto the canonical names cc, c4, github, wikipedia, book, arxiv,
stackexchange case-insensitively, ignoring '-', '_' and a 'redpajama' prefix, with a few aliases
(commoncrawl -> cc, wiki -> wikipedia, books -> book, se -> stackexchange, code -> github). A named preset
must cover exactly the configured domains; otherwise `DataError` says which names are missing or unknown.
`uniform` works for any domain names.
"""
from __future__ import annotations

import numpy as np

from megatron_moe.config import DataConfig
from megatron_moe.errors import UserError


class DataError(UserError, ValueError):
    """Data that cannot be used as configured; the message is one line naming the domain / file / values."""


SLIMPAJAMA_DOMAINS = ("cc", "c4", "github", "wikipedia", "book", "arxiv", "stackexchange")

WEIGHT_PRESETS: dict[str, dict[str, float]] = {
    "llama": dict(cc=0.67, c4=0.15, github=0.045, wikipedia=0.045, book=0.045, arxiv=0.025, stackexchange=0.02),
    "sheared_llama": dict(cc=0.361, c4=0.492, github=0.008, wikipedia=0.031, book=0.091, arxiv=0.007,
                          stackexchange=0.01),
}
"""Static weight presets (the spec's numbers); `uniform` is computed for any domain list."""

REF_LOSS_PRESETS: dict[str, dict[str, float]] = {
    "llama2-7b": dict(book=1.9252, wikipedia=1.5899, stackexchange=1.4975, github=0.6984, c4=2.0749,
                      cc=1.6917, arxiv=1.2408),
}
"""Per-domain reference validation losses for dynamic sampling (LLaMA-2-7B on SlimPajama)."""

_ALIASES = {"commoncrawl": "cc", "common_crawl": "cc", "wiki": "wikipedia", "books": "book",
            "se": "stackexchange", "stack_exchange": "stackexchange", "code": "github"}


def canonical_domain(name: str) -> str:
    """Canonical SlimPajama domain of a configured name (unknown names come back normalised, unmapped)."""
    key = name.strip().lower().replace("-", "_")
    if key.startswith("redpajama"):
        key = key[len("redpajama"):].lstrip("_")
    key = _ALIASES.get(key, key)
    return key.replace("_", "") if key.replace("_", "") in SLIMPAJAMA_DOMAINS else key


def map_preset(table: dict[str, float], names: list[str], what: str) -> np.ndarray:
    """Values of `table` (keyed by canonical domain) in the order of `names`; DataError on any mismatch."""
    canon = [canonical_domain(n) for n in names]
    unknown = [n for n, c in zip(names, canon) if c not in table]
    if unknown:
        raise DataError(f"{what} has no entry for domain(s) {', '.join(unknown)}; "
                        f"it knows {', '.join(table)}")
    dupes = sorted({c for c in canon if canon.count(c) > 1})
    if dupes:
        raise DataError(f"{what}: several configured domains map to {', '.join(dupes)} ({', '.join(names)})")
    missing = [k for k in table if k not in canon]
    if missing:
        raise DataError(f"{what} also weights {', '.join(missing)}, which are not configured domains "
                        f"({', '.join(names)}); configure them or give explicit weights")
    return np.array([table[c] for c in canon], dtype=np.float64)


def preset_weights(preset: str, names: list[str]) -> np.ndarray:
    """Normalised weights of a named preset over `names`."""
    if preset == "uniform":
        return np.full(len(names), 1.0 / len(names))
    if preset not in WEIGHT_PRESETS:
        raise DataError(f"unknown data.weights_preset {preset!r}; known: uniform, {', '.join(WEIGHT_PRESETS)}")
    w = map_preset(WEIGHT_PRESETS[preset], names, f"data.weights_preset={preset}")
    return w / w.sum()


def resolve_weights(cfg: DataConfig) -> np.ndarray:
    """Initial domain weights (normalised): the preset, the per-domain weights, or uniform if neither."""
    names = [d.name for d in cfg.domains]
    given = [d.weight for d in cfg.domains]
    if cfg.weights_preset is not None:
        if any(w is not None for w in given):
            raise DataError(f"data.weights_preset={cfg.weights_preset} and per-domain weights are both set; "
                            "use one")
        return preset_weights(cfg.weights_preset, names)
    if all(w is None for w in given):
        return np.full(len(names), 1.0 / len(names))
    missing = [n for n, w in zip(names, given) if w is None]
    if missing:
        raise DataError(f"domain(s) {', '.join(missing)} have no weight while others do; give all or none")
    w = np.array(given, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise DataError(f"domain weights {dict(zip(names, given))} must be finite, >= 0, and not all 0")
    return w / w.sum()


def resolve_ref_losses(cfg: DataConfig) -> np.ndarray:
    """Reference losses per domain: data.ref_losses_preset, overridden by each domain's ref_loss."""
    names = [d.name for d in cfg.domains]
    base: dict[str, float] = {}
    if cfg.ref_losses_preset is not None:
        if cfg.ref_losses_preset not in REF_LOSS_PRESETS:
            raise DataError(f"unknown data.ref_losses_preset {cfg.ref_losses_preset!r}; "
                            f"known: {', '.join(REF_LOSS_PRESETS)}")
        table = REF_LOSS_PRESETS[cfg.ref_losses_preset]
        base = {n: table[canonical_domain(n)] for n in names if canonical_domain(n) in table}
    out = []
    for d in cfg.domains:
        value = d.ref_loss if d.ref_loss is not None else base.get(d.name)
        if value is None:
            raise DataError(f"data.sampling=dynamic needs a reference loss for domain {d.name}: set its "
                            "ref_loss or data.ref_losses_preset")
        out.append(float(value))
    return np.array(out, dtype=np.float64)
