"""The end of `make demo`: export a checkpoint to Mixtral, reload it with plain transformers and generate."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def export_and_generate(load: str | Path, save: str | Path, prompt_ids: Sequence[int], max_new_tokens: int = 8,
                        fmt: str = "mixtral") -> list[int]:
    """Export `load` as `fmt` into `save`, load it with `AutoModelForCausalLM` (no custom code) and greedily
    generate `max_new_tokens` after `prompt_ids`. Returns the new token ids."""
    from transformers import AutoModelForCausalLM

    from . import export_hf

    out = export_hf(load, save, fmt)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=model.config.eos_token_id)
    new = gen[0, ids.shape[1]:].tolist()
    log.info("%s model from %s generated %s", type(model).__name__, out, new)
    return new


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with our model (no KV cache; for checks on small models)."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=next(model.parameters()).device)
    for _ in range(max_new_tokens):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[0, len(prompt_ids):].tolist()
