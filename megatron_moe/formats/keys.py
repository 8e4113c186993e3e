"""Name templates: each HF format is a table of (canonical name, format name) pairs (docs/checkpoint_format.md).

    keys = KeyMap([("layers.{i}.attn.wq.weight", "model.layers.{i}.self_attn.q_proj.weight"), ...])
    keys.theirs("layers.3.attn.wq.weight")          # "model.layers.3.self_attn.q_proj.weight"
    keys.ours("model.layers.3.self_attn.q_proj.weight")
    experts = ExpertMap([("layers.{i}.mlp.experts.w1", "model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight")])
    experts.theirs("layers.3.mlp.experts.w1", j=5)  # the format stores one tensor per expert j

`{i}` is a layer index, `{j}` an expert index.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence


def _pattern(template: str) -> re.Pattern:
    out = re.escape(template)
    for field in ("i", "j"):
        out = out.replace(re.escape("{" + field + "}"), f"(?P<{field}>\\d+)")
    return re.compile(out)


class KeyMap:
    """One-to-one renames between canonical and format names."""

    def __init__(self, pairs: Sequence[tuple[str, str]]):
        self.pairs = list(pairs)
        self._ours = [(_pattern(o), t) for o, t in self.pairs]
        self._theirs = [(_pattern(t), o) for o, t in self.pairs]

    @staticmethod
    def _map(rules, name: str) -> Optional[str]:
        for pat, target in rules:
            m = pat.fullmatch(name)
            if m:
                return target.format(**m.groupdict())
        return None

    def theirs(self, ours: str) -> Optional[str]:
        return self._map(self._ours, ours)

    def ours(self, theirs: str) -> Optional[str]:
        return self._map(self._theirs, theirs)

    def __add__(self, other: "KeyMap") -> "KeyMap":
        return KeyMap(self.pairs + other.pairs)


class ExpertMap:
    """Stacked canonical expert tensors [E, ...] <-> one format tensor per expert."""

    def __init__(self, pairs: Sequence[tuple[str, str]]):
        self.pairs = list(pairs)
        self._ours = [(_pattern(o), t) for o, t in self.pairs]

    def theirs(self, ours: str, j: int) -> Optional[str]:
        for pat, target in self._ours:
            m = pat.fullmatch(ours)
            if m:
                return target.format(j=j, **m.groupdict())
        return None

    def names(self, ours: str, num_experts: int) -> Optional[list[str]]:
        if self.theirs(ours, 0) is None:
            return None
        return [self.theirs(ours, j) for j in range(num_experts)]

    def canonical(self, layers: Iterable[int]) -> list[str]:
        """Every canonical stacked name of these layers."""
        return [o.format(i=i) for i in layers for o, _ in self.pairs]
