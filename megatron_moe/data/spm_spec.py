"""The options of a sentencepiece `.model` that decide how it encodes, read without protobuf.

    spec = read_spm_spec("tokenizer.model")
    spec.model_type, spec.byte_fallback, spec.add_dummy_prefix, spec.remove_extra_whitespaces, spec.charsmap

A `.model` file is a serialized `sentencepiece.ModelProto`. Its pieces, scores and piece types are read through
the sentencepiece library (data/spm_to_hf.py); the few options the library does not expose (the normalizer and
trainer specs) are read here from the protobuf wire format, which is stable across protobuf releases. We do not
use generated protobuf classes: sentencepiece's and transformers' generated modules need a protobuf runtime at
least as new as the one that generated them (protobuf 7 for sentencepiece 0.2.3), which the environment may not
have. Field numbers are those of sentencepiece's `sentencepiece_model.proto`; tests/export/test_spm_to_hf.py
checks them, and the values read, against protobuf's own parser of that schema.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .tokenizer import TokenizerError

MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

# ModelProto, and its SentencePiece message (piece, type; type 4 is USER_DEFINED)
_PIECES, _TRAINER_SPEC, _NORMALIZER_SPEC, _DENORMALIZER_SPEC = 1, 2, 3, 5
_PIECE_TEXT, _PIECE_TYPE, _USER_DEFINED = 1, 3, 4
# TrainerSpec (varint fields; the string fields are read as bytes)
_TRAINER_VARINTS = {3: "model_type", 24: "treat_whitespace_as_suffix", 25: "split_digits", 35: "byte_fallback",
                    26: "allow_whitespace_only_pieces", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
_TRAINER_STRINGS = {53: "pretokenization_delimiter"}
# NormalizerSpec
_NORM_NAME, _NORM_CHARSMAP, _NORM_DUMMY_PREFIX, _NORM_REMOVE_WS, _NORM_ESCAPE_WS, _NORM_RULE_TSV = 1, 2, 3, 4, 5, 6


@dataclass
class SpmSpec:
    """What a sentencepiece model does besides its vocabulary (defaults are the proto's defaults)."""

    model_type: str = "unigram"
    """unigram | bpe | word | char (TrainerSpec.model_type)."""
    byte_fallback: bool = False
    """Characters outside the vocabulary become their UTF-8 bytes `<0xXX>` instead of `<unk>`."""
    treat_whitespace_as_suffix: bool = False
    """The space marker ends a piece instead of starting it."""
    split_digits: bool = False
    """Training option: digits were never merged (the vocabulary then has no multi-digit pieces)."""
    allow_whitespace_only_pieces: bool = False
    """Training option: pieces made only of space markers (e.g. LLaMA's `▁▁▁▁`) were allowed."""
    pretokenization_delimiter: str = ""
    """Training option: a delimiter that pieces never cross."""
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    normalizer_name: str = ""
    """The normalization rule's name (nmt_nfkc, nfkc, identity, ...); its table is `charsmap`."""
    charsmap: bytes = b""
    """The compiled normalization table (empty for `identity`)."""
    add_dummy_prefix: bool = True
    """A space marker is put before the text (LLaMA: `▁Hello`)."""
    remove_extra_whitespaces: bool = True
    """Leading and trailing spaces are dropped and runs of spaces become one (after normalization)."""
    escape_whitespaces: bool = True
    """Spaces are written as `▁` (U+2581)."""
    has_denormalizer: bool = False
    """The model carries a denormalization rule for decoding."""
    user_defined: tuple = ()
    """Pieces of type USER_DEFINED (matched whole in the text; the sentencepiece library reports them as normal)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """(field number, wire type, value) of one message: value is an int (varint, fixed) or bytes (length)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, value


def _int32(v: int) -> int:
    """A varint-encoded int32 (negative values are written as 64-bit two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_spm_spec(data: bytes) -> SpmSpec:
    """The SpmSpec of a serialized ModelProto (ValueError on a malformed message)."""
    spec, user_defined = SpmSpec(), []
    for num, wire, value in _fields(data):
        if num == _PIECES and wire == 2:
            piece = dict((n, v) for n, _, v in _fields(value) if n in (_PIECE_TEXT, _PIECE_TYPE))
            if piece.get(_PIECE_TYPE) == _USER_DEFINED:
                user_defined.append(value_str(piece.get(_PIECE_TEXT, b"")))
        elif num == _TRAINER_SPEC and wire == 2:
            for n, w, v in _fields(value):
                if n in _TRAINER_VARINTS and w == 0:
                    name = _TRAINER_VARINTS[n]
                    if name == "model_type":
                        spec.model_type = MODEL_TYPES.get(v, f"unknown({v})")
                    elif name.endswith("_id"):
                        setattr(spec, name, _int32(v))
                    else:
                        setattr(spec, name, bool(v))
                elif n in _TRAINER_STRINGS and w == 2:
                    setattr(spec, _TRAINER_STRINGS[n], value_str(v))
        elif num == _NORMALIZER_SPEC and wire == 2:
            for n, w, v in _fields(value):
                if n == _NORM_NAME and w == 2:
                    spec.normalizer_name = value_str(v)
                elif n == _NORM_CHARSMAP and w == 2:
                    spec.charsmap = bytes(v)
                elif n == _NORM_DUMMY_PREFIX and w == 0:
                    spec.add_dummy_prefix = bool(v)
                elif n == _NORM_REMOVE_WS and w == 0:
                    spec.remove_extra_whitespaces = bool(v)
                elif n == _NORM_ESCAPE_WS and w == 0:
                    spec.escape_whitespaces = bool(v)
        elif num == _DENORMALIZER_SPEC and wire == 2:
            spec.has_denormalizer = any(n == _NORM_CHARSMAP and len(v) > 0 for n, _, v in _fields(value))
    spec.user_defined = tuple(user_defined)
    return spec


def value_str(v: bytes) -> str:
    return bytes(v).decode("utf-8", errors="replace")


def read_spm_spec(path: str | Path) -> SpmSpec:
    """SpmSpec of a `.model` file; TokenizerError naming the file when it is not a ModelProto."""
    try:
        return parse_spm_spec(Path(path).read_bytes())
    except (ValueError, struct.error) as err:
        raise TokenizerError(f"tokenizer {path} is not a readable sentencepiece model ({err})") from None
