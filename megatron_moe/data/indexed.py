"""Opening megatron-core indexed datasets (PREFIX.bin + PREFIX.idx) safely: the pair is checked first.

    ds = open_indexed("data/cc_text_document")        # DataError with one line if missing, corrupt or mismatched
    hi = max_token_id("data/cc_text_document")        # largest token id (None if the .bin is too big to scan)
    check_vocab(["data/cc_text_document"], 32000)     # DataError when a token id is outside the vocabulary

`.idx` layout (megatron-core): b"MMIDIDX\\0\\0", version <Q = 1, dtype code <B, sequence count n <Q,
document count d <Q, then int32 lengths [n], int64 byte pointers [n], int64 document indices [d].
A valid pair has exactly that .idx size and a .bin of pointers[-1] + lengths[-1] * itemsize bytes, so a .bin
from one run never pairs silently with an .idx from another. megatron-core's reader is only constructed after
this check, and a reader that still fails to construct is neutralised so its __del__ prints nothing at exit.
"""
from __future__ import annotations

import os
import struct
from typing import Optional, Sequence

import numpy as np

from megatron_moe.data._mcore import IndexedDataset, get_bin_path, get_idx_path
from megatron_moe.data.presets import DataError

_HEADER = b"MMIDIDX\x00\x00"
_FIXED = 9 + 8 + 1 + 8 + 8
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
           8: np.uint16}
SCAN_LIMIT_BYTES = 8 << 30
"""max_token_id scans .bin files up to this size; bigger ones are guarded per batch only (docs/data.md)."""


def read_header(prefix: str) -> tuple[np.dtype, int, int]:
    """(token dtype, sequence count, document count) of PREFIX.idx after checking the pair's sizes."""
    idx, binf = get_idx_path(prefix), get_bin_path(prefix)
    for path in (idx, binf):
        if not os.path.isfile(path):
            raise DataError(f"indexed dataset file {path} does not exist (run megatron-moe preprocess)")
    size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        head = f.read(_FIXED)
    if len(head) < _FIXED or head[:9] != _HEADER:
        raise DataError(f"{idx}: not a megatron indexed-dataset index (bad header)")
    version, code, n, d = struct.unpack("<QBQQ", head[9:])
    if version != 1 or code not in _DTYPES:
        raise DataError(f"{idx}: unsupported index version {version} or dtype code {code}")
    want = _FIXED + 12 * n + 8 * d
    if size != want:
        raise DataError(f"{idx}: {size} bytes, but its header ({n} sequences, {d} documents) implies {want}; "
                        f"the index is truncated or corrupt")
    dtype = np.dtype(_DTYPES[code])
    if n:
        lengths = np.memmap(idx, dtype=np.int32, mode="r", offset=_FIXED, shape=(n,))
        pointers = np.memmap(idx, dtype=np.int64, mode="r", offset=_FIXED + 4 * n, shape=(n,))
        if int(lengths.min()) < 0 or (n > 1 and bool((np.diff(pointers) < 0).any())):
            raise DataError(f"{idx}: negative sequence lengths or unordered pointers (corrupt index)")
        need = int(pointers[-1]) + int(lengths[-1]) * dtype.itemsize
        have = os.path.getsize(binf)
        if have != need:
            raise DataError(f"{binf}: {have} bytes, but {idx} describes {need}; the .bin and .idx are not a pair "
                            f"(an interrupted or mixed write); preprocess the data again")
    return dtype, n, d


def open_indexed(prefix: str) -> IndexedDataset:
    """megatron-core IndexedDataset for `prefix`, after `read_header` checked the pair."""
    read_header(prefix)
    ds = IndexedDataset.__new__(IndexedDataset)
    try:
        ds.__init__(prefix)
    except Exception as err:  # its reader asserts on corrupt files; keep its __del__ quiet
        ds.bin_reader = ds.index = None
        raise DataError(f"indexed dataset {prefix} is not readable: {type(err).__name__}: {err}") from None
    return ds


def token_id_range(prefix: str) -> Optional[tuple[int, int]]:
    """(smallest, largest) token id in PREFIX.bin (one streaming pass), None when the file exceeds
    SCAN_LIMIT_BYTES; (0, -1) for an empty dataset."""
    dtype, n, _ = read_header(prefix)
    path = get_bin_path(prefix)
    size = os.path.getsize(path)
    if n == 0 or size == 0:
        return 0, -1
    if size > SCAN_LIMIT_BYTES:
        return None
    data = np.memmap(path, dtype=dtype, mode="r")
    step = 1 << 24
    chunks = [data[i:i + step] for i in range(0, len(data), step)]
    return int(min(int(c.min()) for c in chunks)), int(max(int(c.max()) for c in chunks))


def max_token_id(prefix: str) -> Optional[int]:
    """Largest token id in PREFIX.bin, or None when the file is too big to scan (token_id_range)."""
    found = token_id_range(prefix)
    return None if found is None else found[1]


def check_vocab(prefixes: Sequence[str], vocab_size: int, what: str = "data") -> None:
    """DataError naming the dataset when it holds a token id outside [0, vocab_size) (e.g. a tokenizer bigger
    than the model, or negative ids from a signed dtype)."""
    for prefix in prefixes:
        found = token_id_range(str(prefix))
        if found is None:
            continue
        lo, hi = found
        if lo < 0:
            raise DataError(f"{what} {prefix} holds token id {lo}; token ids must be >= 0")
        if hi >= vocab_size:
            raise DataError(f"{what} {prefix} holds token id {hi}, outside the model vocabulary "
                            f"(model.vocab_size={vocab_size}); was it tokenized with another tokenizer?")


def check_batch(tokens: np.ndarray, vocab_size: int, where: str) -> None:
    """Per-batch guard for datasets too big to scan up front."""
    if not tokens.size:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise DataError(f"{where}: token id {bad} is outside the model vocabulary [0, {vocab_size})")
