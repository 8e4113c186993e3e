"""Exact sentencepiece BPE encoding of whole documents with a per-segment cache (the preprocessing fast path).

    enc = SegmentCachedEncoder.create(sp, model_bytes)   # None when the model does not qualify
    data, lengths = enc.encode_packed(texts, np.uint16, prefix=[bos], suffix=[])

Why it is exact. sentencepiece's BPE repeatedly merges the adjacent pair of symbols whose concatenation is the
highest-scoring vocabulary piece (ties: leftmost). A merge can only create a symbol that is a vocabulary piece,
so if no piece contains the characters on both sides of a position, no symbol ever spans that position, and the
merges on its two sides never interact: the text cut at such positions and encoded piece by piece gives the
same ids, in the same order, as the whole text. `_safe_cuts` finds such positions from the vocabulary itself:
- before every run of spaces, when no piece has a non-space character followed by "▁" (LLaMA-2 and models
  trained like it, with `split_by_whitespace`, have none; whitespace-only pieces such as "▁▁▁" are fine);
- around every character that occurs in no multi-character piece (with `split_digits`, every digit; with
  `byte_fallback`, every character outside the vocabulary, such as "\\n" in LLaMA-2).
Each distinct segment is encoded once by sentencepiece itself (a copy of the model without the dummy prefix,
so a segment is tokenized exactly as it appears inside the normalized document) and its ids are cached as bytes;
a document is the join of its segments' bytes.

The model qualifies only when nothing else can join or change characters across a cut: BPE, identity
normalisation (no NFKC map, no rule TSV), whitespace kept (`remove_extra_whitespaces: false`), dummy prefix on,
whitespace escaped as a prefix (not a suffix), byte fallback on (no fused unknown runs), and no user-defined or
unused pieces. Other models (for instance the nmt_nfkc default of `spm_train`) use sentencepiece directly.
tests/data/test_spm_fast.py compares the ids with sentencepiece's on a mixed corpus of code, prose, unicode and
whitespace runs.

The model file is read with a minimal protobuf wire reader (the fields below), because sentencepiece's generated
`sentencepiece_model_pb2` needs a newer protobuf runtime than the one the project's other packages pin.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

import numpy as np

# sentencepiece_model.proto field numbers
_MODEL_PIECES, _MODEL_TRAINER, _MODEL_NORMALIZER = 1, 2, 3
_PIECE_TEXT, _PIECE_TYPE = 1, 3
_TRAINER_MODEL_TYPE, _TRAINER_WS_SUFFIX, _TRAINER_BYTE_FALLBACK = 3, 24, 35
_NORM_NAME, _NORM_CHARSMAP, _NORM_DUMMY_PREFIX, _NORM_REMOVE_WS, _NORM_ESCAPE_WS, _NORM_RULE_TSV = 1, 2, 3, 4, 5, 6
_BPE, _NORMAL, _USER_DEFINED, _UNUSED = 2, 1, 4, 5

MAX_CACHE_ENTRIES = 1 << 20
"""Distinct segments kept per process (about 200 MB); the cache starts over when full (output unchanged)."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fields(buf: bytes) -> Iterable[tuple[int, int, object, int, int]]:
    """(field number, wire type, value, start, end) of each field of one message; value: int or bytes."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value, start, i


def model_spec(model: bytes) -> dict:
    """The settings of a sentencepiece model file that decide whether the fast path is exact."""
    spec = {"model_type": 1, "treat_whitespace_as_suffix": False, "byte_fallback": False, "name": "",
            "charsmap": b"", "rule_tsv": b"", "add_dummy_prefix": True, "remove_extra_whitespaces": True,
            "escape_whitespaces": True, "pieces": []}
    for number, _, value, _, _ in _fields(model):
        if number == _MODEL_PIECES:
            text, kind = "", _NORMAL
            for n, _, v, _, _ in _fields(value):
                if n == _PIECE_TEXT:
                    text = v.decode("utf-8")
                elif n == _PIECE_TYPE:
                    kind = v
            spec["pieces"].append((text, kind))
        elif number == _MODEL_TRAINER:
            for n, _, v, _, _ in _fields(value):
                if n == _TRAINER_MODEL_TYPE:
                    spec["model_type"] = v
                elif n == _TRAINER_WS_SUFFIX:
                    spec["treat_whitespace_as_suffix"] = bool(v)
                elif n == _TRAINER_BYTE_FALLBACK:
                    spec["byte_fallback"] = bool(v)
        elif number == _MODEL_NORMALIZER:
            names = {_NORM_NAME: "name", _NORM_CHARSMAP: "charsmap", _NORM_RULE_TSV: "rule_tsv",
                     _NORM_DUMMY_PREFIX: "add_dummy_prefix", _NORM_REMOVE_WS: "remove_extra_whitespaces",
                     _NORM_ESCAPE_WS: "escape_whitespaces"}
            for n, _, v, _, _ in _fields(value):
                if n in names:
                    key = names[n]
                    spec[key] = v.decode("utf-8") if key == "name" else (bool(v) if isinstance(v, int) else v)
    return spec


def why_not_exact(spec: dict) -> Optional[str]:
    """None when the segment cache is exact for this model, else the reason it is not used."""
    checks = [
        (spec["model_type"] == _BPE, "not a BPE model"),
        (spec["name"] in ("identity", "") and not spec["charsmap"] and not spec["rule_tsv"],
         f"normalisation {spec['name'] or 'custom'!r} is not identity"),
        (spec["add_dummy_prefix"], "no dummy prefix"),
        (not spec["remove_extra_whitespaces"], "removes extra whitespace"),
        (spec["escape_whitespaces"] and not spec["treat_whitespace_as_suffix"], "whitespace not escaped as a prefix"),
        (spec["byte_fallback"], "no byte fallback (unknown characters are fused)"),
        (all(kind not in (_USER_DEFINED, _UNUSED) for _, kind in spec["pieces"]), "user-defined or unused pieces"),
        (not any(re.search("[^▁]▁", text) for text, kind in spec["pieces"] if kind == _NORMAL),
         "a piece joins a character with the following whitespace"),
    ]
    return next((why for ok, why in checks if not ok), None)


def without_dummy_prefix(model: bytes) -> bytes:
    """The model file with normalizer_spec.add_dummy_prefix = false (a later scalar field wins in protobuf)."""
    out = bytearray()
    for number, wire, value, start, end in _fields(model):
        if number == _MODEL_NORMALIZER and wire == 2:
            body = value + bytes([(_NORM_DUMMY_PREFIX << 3) | 0, 0])
            out += _encode_varint((number << 3) | 2) + _encode_varint(len(body)) + body
        else:
            out += model[start:end]
    return bytes(out)


def _segment_regex(spec: dict) -> re.Pattern:
    """Segments: a run of spaces with the joinable characters after it, a run of joinable characters, or any
    other single character. 'Joinable': occurs in some multi-character piece (the space is '▁' there)."""
    joinable = set()
    for text, kind in spec["pieces"]:
        if kind == _NORMAL and len(text) > 1:
            joinable.update(text)
    joinable.discard("▁")
    joinable.discard(" ")
    cls = "".join(re.escape(c) for c in sorted(joinable)) or "(?!)"
    return re.compile(rf"[ ▁]+[{cls}]*|[{cls}]+|.", re.S)


class SegmentCachedEncoder:
    """sentencepiece ids of whole documents through a cache of distinct segments (see the module doc)."""

    def __init__(self, sp_plain, segment_re: re.Pattern, max_entries: int = MAX_CACHE_ENTRIES):
        self._sp = sp_plain
        self._re = segment_re
        self._max = max_entries
        self._cache: dict[str, bytes] = {}
        self._dtype: Optional[np.dtype] = None

    @classmethod
    def create(cls, model: bytes) -> Optional["SegmentCachedEncoder"]:
        import sentencepiece as spm

        spec = model_spec(model)
        if why_not_exact(spec) is not None:
            return None
        plain = spm.SentencePieceProcessor(model_proto=without_dummy_prefix(model))
        return cls(plain, _segment_regex(spec))

    def _fill(self, missing: Sequence[str]) -> None:
        """Encode new segments (one sentencepiece call) into the cache as bytes of the output dtype."""
        for seg, ids in zip(missing, self._sp.encode(list(missing))):
            self._cache[seg] = np.asarray(ids, dtype=self._dtype).tobytes()

    def encode_packed(self, texts: Sequence[str], dtype, prefix: Sequence[int] = (),
                      suffix: Sequence[int] = ()) -> tuple[bytes, np.ndarray]:
        """(token bytes of every document, prefix + ids + suffix each, as `dtype`; tokens per document)."""
        dtype = np.dtype(dtype)
        if dtype != self._dtype:
            self._cache.clear()
            self._dtype = dtype
        head, tail = np.asarray(prefix, dtype).tobytes(), np.asarray(suffix, dtype).tobytes()
        cache, findall = self._cache, self._re.findall
        parts, lengths = [], np.empty(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            segs = findall(" " + text)  # the dummy prefix, as sentencepiece adds it to the document
            missing = set(segs).difference(cache)
            if missing:
                if len(cache) + len(missing) > self._max:
                    cache.clear()
                    missing = set(segs)
                self._fill(list(missing))
            doc = b"".join([head, *map(cache.__getitem__, segs), tail])
            parts.append(doc)
            lengths[i] = len(doc)
        lengths //= dtype.itemsize
        return b"".join(parts), lengths
