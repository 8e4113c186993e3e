"""Write megatron-core indexed datasets (PREFIX.bin + PREFIX.idx) without importing megatron-core or torch.

    w = IndexedWriter("out/ds.bin", np.uint16)
    w.add_documents(token_bytes, lengths)          # documents' tokens back to back; tokens per document
    w.finalize("out/ds.idx")

The bytes are those of megatron-core's `IndexedDatasetBuilder` with one sequence per document (add_item +
end_document): tests/data/test_data_preprocess.py compares both writers' files byte for byte. Importing
megatron-core takes 10+ s (its package imports the optimizer and FSDP code), which `megatron-moe preprocess`
must not pay at start-up; the format is the one described in data/indexed.py.
"""
from __future__ import annotations

import struct

import numpy as np

_HEADER = b"MMIDIDX\x00\x00"
_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
          np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}


def optimal_dtype(vocab_size: int) -> np.dtype:
    """megatron-core's `DType.optimal_dtype`: uint16 below 65500 ids, else int32."""
    return np.dtype(np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32)


class IndexedWriter:
    """Streams token bytes to the .bin; keeps one int32 length per document for the .idx."""

    def __init__(self, bin_path: str, dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODES:
            raise ValueError(f"dtype {self.dtype} has no indexed-dataset code")
        self.data_file = open(bin_path, "wb")
        self._lengths: list[np.ndarray] = []

    def add_documents(self, data: bytes, lengths: np.ndarray) -> None:
        self.data_file.write(data)
        self._lengths.append(np.asarray(lengths, dtype=np.int32))

    def finalize(self, idx_path: str) -> None:
        self.data_file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        n = len(lengths)
        pointers = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(idx_path, "wb") as f:
            f.write(_HEADER + struct.pack("<Q", 1) + struct.pack("<B", _CODES[self.dtype]))
            f.write(struct.pack("<Q", n) + struct.pack("<Q", n + 1))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(np.arange(n + 1, dtype=np.int64).tobytes())

    def close(self) -> None:
        if not self.data_file.closed:
            self.data_file.close()
