"""The dtype vocabulary shared by the CLI and the library: fp32 | bf16 | fp16 (torch spellings accepted)."""
from __future__ import annotations

from typing import Optional

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def canonical_dtype_name(text: str) -> Optional[str]:
    """fp32 / bf16 / fp16 for any accepted spelling, None if unknown."""
    name = ALIASES.get(text, text)
    return name if name in DTYPES else None


def to_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """torch dtype of an accepted name; None stays None (keep the stored dtype)."""
    if name is None:
        return None
    canonical = canonical_dtype_name(name)
    if canonical is None:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[canonical]
