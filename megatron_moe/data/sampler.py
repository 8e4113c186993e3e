"""Global, layout-independent domain sampling (static or dynamic weights).

For optimizer step s the sampler decides all G = global_batch_size sequences of the global batch:
    u_G   = uniform draws from a generator seeded by (seed, s)            (nothing else feeds the RNG)
    dom_G = domain whose cumulative-weight bin holds u                    (i.i.d. categorical)
    idx_G = per-domain running counter: the j-th sequence of domain d in the step gets consumed[d] + j
Every rank computes the same plan; a DP rank then takes its contiguous slice. The state that must survive a
restart is (step, consumed per domain, weights): a few numbers, JSON-serialisable.

Dynamic rules (applied by `MultiDomainData.update_weights` at each evaluation; L, L_ref per domain):
    sheared: a' = softmax(log a + eta * (L - L_ref)); a = (1 - c) * a' + c / n; a /= sum(a)
    paper:   a  ∝ a * exp(eta * max(0, L - L_ref))          (eta = 1 is the original paper's rule)
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from megatron_moe.data.presets import DataError

log = logging.getLogger(__name__)

_STEP_STREAM = 0xD0A1


def sheared_update(weights: np.ndarray, losses: np.ndarray, ref_losses: np.ndarray, eta: float,
                   smoothing: float) -> np.ndarray:
    """Sheared-LLaMA dynamic batch loading: exponentiated-gradient step on the excess loss, then smoothing."""
    with np.errstate(divide="ignore"):
        logits = np.log(weights) + eta * (np.asarray(losses, np.float64) - ref_losses)
    logits -= logits.max()
    step = np.exp(logits)
    step /= step.sum()
    out = (1.0 - smoothing) * step + smoothing / len(weights)
    return out / out.sum()


def paper_update(weights: np.ndarray, losses: np.ndarray, ref_losses: np.ndarray, eta: float) -> np.ndarray:
    """The original paper's variant: a ∝ a * exp(eta * max(0, L - L_ref)) (domains at/below reference keep a)."""
    excess = np.maximum(0.0, np.asarray(losses, np.float64) - ref_losses)
    out = weights * np.exp(eta * (excess - excess.max()))  # shift for stability; cancels in the normalisation
    return out / out.sum()


class DomainSampler:
    """Decides (domain, per-domain sample index) for every sequence of every global batch."""

    def __init__(self, names: list[str], weights: np.ndarray, seed: int, global_batch_size: int):
        if global_batch_size < 1:
            raise DataError(f"global_batch_size={global_batch_size} must be >= 1")
        self.names = list(names)
        self.seed = int(seed)
        self.global_batch_size = int(global_batch_size)
        self.step = 0
        self.consumed = np.zeros(len(names), dtype=np.int64)
        self.weights = self._check(weights)

    def _check(self, weights, normalise: bool = True) -> np.ndarray:
        w = np.array(weights, dtype=np.float64)
        if w.shape != (len(self.names),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"domain weights {w.tolist()} for {self.names} must be {len(self.names)} finite "
                            "values >= 0, not all 0")
        return w / w.sum() if normalise else w

    def set_weights(self, weights) -> None:
        self.weights = self._check(weights)

    def plan(self, step: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(domain_G, index_G) of the current step's global batch, without advancing. Only the current step
        is exact: later steps depend on the weights and counters at that time."""
        step = self.step if step is None else step
        u_G = np.random.default_rng([self.seed, _STEP_STREAM, step]).random(self.global_batch_size)
        cdf = np.cumsum(self.weights)
        cdf /= cdf[-1]
        domain_G = np.minimum(np.searchsorted(cdf, u_G, side="right"), len(self.names) - 1)
        index_G = np.empty(self.global_batch_size, dtype=np.int64)
        for d in range(len(self.names)):
            where = np.flatnonzero(domain_G == d)
            index_G[where] = self.consumed[d] + np.arange(len(where))
        return domain_G.astype(np.int64), index_G

    def next_plan(self) -> tuple[np.ndarray, np.ndarray]:
        """The current step's plan, then advance the step and per-domain counters."""
        domain_G, index_G = self.plan()
        self.consumed += np.bincount(domain_G, minlength=len(self.names))
        self.step += 1
        return domain_G, index_G

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch_size": self.global_batch_size,
                "consumed": {n: int(c) for n, c in zip(self.names, self.consumed)},
                "weights": {n: float(w) for n, w in zip(self.names, self.weights)}}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state.get("consumed", {})) != sorted(self.names):
            raise DataError(f"sampler state is for domains {sorted(state.get('consumed', {}))}, "
                            f"this run has {sorted(self.names)}")
        if int(state["seed"]) != self.seed:
            raise DataError(f"sampler state has seed={state['seed']} but this run has data.seed={self.seed}; "
                            "the sample sequence would not continue")
        if int(state["global_batch_size"]) != self.global_batch_size:
            log.warning("sampler state has global_batch_size=%s, this run uses %d: batches from here on differ "
                        "from the original run", state["global_batch_size"], self.global_batch_size)
        self.step = int(state["step"])
        self.consumed = np.array([int(state["consumed"][n]) for n in self.names], dtype=np.int64)
        # weights are restored bit-exactly (no renormalisation) so the continuation is identical
        self.weights = self._check([float(state["weights"][n]) for n in self.names], normalise=False)
