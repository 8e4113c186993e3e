"""Helpers for data tests: hand-made indexed datasets and sample texts."""
import numpy as np
import torch


def write_indexed(prefix, docs, dtype=np.uint16):
    """Write `docs` (lists of ints) as one sequence per document with megatron-core's builder."""
    from megatron_moe.data._mcore import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        builder.add_item(torch.tensor(doc, dtype=torch.int64))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def numbered_docs(n_docs, base, min_len=3, max_len=12, seed=0):
    """Documents [1(BOS), base+i*100+1, base+i*100+2, ...]: every token says which document it came from."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_docs)
    return [[1] + [base + i * 100 + j for j in range(1, int(n))] for i, n in enumerate(lengths)]


SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "def main(argv): return parse(argv) or 0",
    "mixture of experts routes every token to two experts",
    "import os, sys; print(sys.argv)",
    "packing concatenates documents and cuts fixed length blocks",
    "sentencepiece learns a vocabulary from raw text",
]
