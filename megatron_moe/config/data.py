"""Training data and domains (data: section)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ._base import ConfigError, _at_least
from .building import _build


@dataclass
class DomainConfig:
    """One data domain: a name and the indexed-dataset prefixes that hold its tokens."""

    name: str = ""
    """Domain name (e.g. cc, c4, github, wikipedia, book, arxiv, stackexchange)."""
    prefixes: list = field(default_factory=list)
    """Paths of megatron indexed datasets (without .bin/.idx) that make up this domain."""
    weight: Optional[float] = None
    """Static sampling weight (normalised over domains); None when data.weights_preset gives it."""
    ref_loss: Optional[float] = None
    """Reference validation loss for dynamic sampling (Sheared-LLaMA); see data.sampling."""


@dataclass
class DataConfig:
    """Training data: domains, sequence packing and domain sampling."""

    domains: list = field(default_factory=list)
    """List of DomainConfig (YAML: list of mappings with name, prefixes, weight, ref_loss)."""
    seq_len: int = 4096
    """Tokens per training sequence (documents are packed across sequence boundaries)."""
    sampling: str = "static"
    """Domain sampling: static (fixed weights) or dynamic (weights updated from validation losses)."""
    weights_preset: Optional[str] = None
    """Named static weights: uniform, llama, sheared_llama (mapped onto the domain names)."""
    ref_losses_preset: Optional[str] = None
    """Named reference losses for dynamic sampling: llama2-7b (the spec's LLaMA-2-7B losses); a domain's ref_loss wins."""
    dynamic_variant: str = "sheared"
    """dynamic rule: sheared (softmax(log a + eta*(L - L_ref)) then smoothing) or paper (a * exp(max(0, L - L_ref)))."""
    dynamic_eta: float = 1.0
    """Step size eta of the dynamic update."""
    dynamic_smoothing: float = 1e-4
    """Smoothing c: a = (1 - c) * a' + c / num_domains."""
    valid_fraction: float = 0.01
    """Fraction of each domain's documents held out for validation (deterministic split)."""
    seed: int = 1227
    """Seed of shuffling and domain sampling."""
    tokenizer: Optional[str] = None
    """Tokenizer (sentencepiece .model, HF dir or tokenizer.json), used for demos and generation."""
    num_workers: int = 0
    """Reserved for background loading; MultiDomainData reads packed samples synchronously from mmap (fast)."""

    def __post_init__(self) -> None:
        self.domains = [d if isinstance(d, DomainConfig) else _build(DomainConfig, d, "data.domains[]")
                        for d in self.domains]

    def validate(self) -> None:
        if self.sampling not in ("static", "dynamic"):
            raise ConfigError(f"data.sampling={self.sampling!r} is not one of static, dynamic")
        if self.dynamic_variant not in ("sheared", "paper"):
            raise ConfigError(f"data.dynamic_variant={self.dynamic_variant!r} is not one of sheared, paper")
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError(f"data.valid_fraction={self.valid_fraction} must be in [0, 1)")
        if not 0 <= self.dynamic_smoothing <= 1:
            raise ConfigError(f"data.dynamic_smoothing={self.dynamic_smoothing} must be in [0, 1]")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len={self.seq_len} must be >= 2")
        _at_least("data", self, ("dynamic_eta", "num_workers"), 0)
        names = [d.name for d in self.domains]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"data.domains need distinct non-empty names, got {names}")
        for d in self.domains:
            if not d.prefixes or not all(isinstance(p, str) and p for p in d.prefixes):
                raise ConfigError(f"data.domains[{d.name}].prefixes must be a non-empty list of dataset prefixes")
            _at_least(f"data.domains[{d.name}]", d, ("weight",), 0)
