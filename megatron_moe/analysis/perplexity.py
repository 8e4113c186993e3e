"""Per-domain loss and perplexity of a model over megatron indexed datasets (batched, with a progress bar).

    domains = open_domains(parse_domains(["wiki=data/wiki_text_document", "data/code_text_document"]), vocab)
    results = evaluate_domains(model, domains, seq_len=512, batch_size=8, max_batches=50)
    # {"wiki": {"loss": 2.31, "ppl": 10.1, "tokens": 204800, "sequences": 400}, ...}

Each domain's documents are read in order, concatenated and cut into disjoint windows of seq_len + 1 tokens
(inputs w[:-1], labels w[1:]); a partial last window is dropped. Every window is scored once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def parse_domains(items: Sequence[str]) -> dict[str, list[str]]:
    """`NAME=PREFIX` or `PREFIX` (named after the file, without a `_text_document` suffix) -> {name: prefixes}."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, _, prefix = item.partition("=") if "=" in item else ("", "", item)
        if not name:
            name = Path(prefix).name.removesuffix("_text_document").removesuffix("_document") or prefix
        out.setdefault(name, []).append(prefix)
    return out


def open_domains(domains: dict[str, list[str]], vocab_size: int) -> dict[str, list]:
    """{name: [opened IndexedDataset]}: every pair checked and every token id checked against the vocabulary
    (data.indexed) before any model is loaded."""
    from ..data.indexed import check_vocab, open_indexed

    out = {}
    for name, prefixes in domains.items():
        check_vocab(prefixes, vocab_size, f"domain {name}:")
        out[name] = [open_indexed(str(p)) for p in prefixes]
    return out


def domain_windows(datasets: Sequence, seq_len: int) -> Iterator[np.ndarray]:
    """Disjoint windows of seq_len + 1 tokens over the concatenated documents of opened `datasets`."""
    buf, have, want = [], 0, seq_len + 1
    for ds in datasets:
        for i in range(len(ds)):
            doc = np.asarray(ds[i], dtype=np.int64)
            buf.append(doc)
            have += len(doc)
            if have >= want:
                flat = np.concatenate(buf)
                n = len(flat) // want
                for k in range(n):
                    yield flat[k * want:(k + 1) * want]
                rest = flat[n * want:]
                buf, have = ([rest] if len(rest) else []), len(rest)


def domain_batches(datasets: Sequence, seq_len: int, batch_size: int,
                   max_batches: Optional[int] = None) -> Iterator[torch.Tensor]:
    """LongTensor batches [B, seq_len + 1] (the last one may be smaller) of opened `datasets`."""
    rows, n = [], 0
    for w in domain_windows(datasets, seq_len):
        rows.append(w)
        if len(rows) == batch_size:
            yield torch.from_numpy(np.stack(rows))
            rows, n = [], n + 1
            if max_batches is not None and n >= max_batches:
                return
    if rows:
        yield torch.from_numpy(np.stack(rows))


@torch.no_grad()
def token_loss_sum(model: nn.Module, batch_BS1: torch.Tensor) -> tuple[float, int]:
    """Summed next-token loss and token count of one batch (our model's `loss`, or any model returning logits)."""
    device = next(model.parameters()).device
    batch_BS1 = batch_BS1.to(device)
    ids_BS, labels_BS = batch_BS1[:, :-1], batch_BS1[:, 1:]
    if hasattr(model, "loss"):
        _, per_seq_B = model.loss(ids_BS, labels_BS)
        return float(per_seq_B.double().sum() * ids_BS.shape[1]), labels_BS.numel()
    out = model(ids_BS)
    logits_BSV = (out.logits if hasattr(out, "logits") else out).float()
    loss = F.cross_entropy(logits_BSV.flatten(0, 1), labels_BS.flatten(), reduction="sum")
    return float(loss), labels_BS.numel()


def evaluate_domains(model: nn.Module, domains: dict[str, list], seq_len: int, batch_size: int = 8,
                     max_batches: Optional[int] = None, progress: bool = True) -> dict[str, dict]:
    """{domain: {loss, ppl, tokens, sequences}} over `open_domains(...)`; a domain with fewer than seq_len + 1
    tokens is an error."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out = {}
    try:
        for name, datasets in domains.items():
            total, tokens, seqs = 0.0, 0, 0
            for batch in tqdm(domain_batches(datasets, seq_len, batch_size, max_batches), desc=f"eval {name}",
                              unit="batch", disable=not progress, total=max_batches):
                s, t = token_loss_sum(model, batch)
                total, tokens, seqs = total + s, tokens + t, seqs + batch.shape[0]
            if tokens == 0:
                raise UserError(f"domain {name} has fewer than seq_len+1={seq_len + 1} tokens; lower --seq-len")
            loss = total / tokens
            out[name] = {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "tokens": tokens, "sequences": seqs}
    finally:
        model.train(was_training)
    return out
