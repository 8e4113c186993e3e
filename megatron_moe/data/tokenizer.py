"""Tokenizers behind one small interface: sentencepiece `.model` files and HF `tokenizer.json` / directories.

    tok = load_tokenizer("tokenizer.model")      # or "hf_dir/" or "hf_dir/tokenizer.json"
    ids = tok.encode("text")                     # no BOS/EOS; callers add them (see `encode_document`)
    data, lengths = tok.encode_packed(texts, np.uint16)   # many documents as token bytes (preprocessing)
    tok.bos_id, tok.eos_id, tok.vocab_size

A path that does not exist or cannot be parsed raises `TokenizerError` with one line naming the path.
Tokenizer objects are cheap to rebuild from their path, which is how worker processes get their own copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError

_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>")


class TokenizerError(UserError, ValueError):
    """A tokenizer path that is missing, unreadable, or lacks a BOS token; one line naming the path."""


class Tokenizer:
    """Common interface: `encode(text) -> list[int]` without special tokens, plus special-token ids."""

    path: str
    bos_id: int
    eos_id: Optional[int]
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def encode_document(self, text: str, append_eos: bool = False) -> list[int]:
        """Token ids of one document: BOS, the text's tokens, and EOS when asked (LLaMA packing)."""
        ids = [self.bos_id] + self.encode(text)
        if append_eos:
            if self.eos_id is None:
                raise TokenizerError(f"tokenizer {self.path} has no EOS token but append_eos was asked")
            ids.append(self.eos_id)
        return ids

    def _document_ids(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_packed(self, texts: list[str], dtype, append_eos: bool = False) -> tuple[bytes, np.ndarray]:
        """Documents as `encode_document` makes them, back to back as bytes of `dtype`, and their lengths."""
        if append_eos and self.eos_id is None:
            raise TokenizerError(f"tokenizer {self.path} has no EOS token but append_eos was asked")
        tail = [self.eos_id] if append_eos else []
        docs = [np.asarray([self.bos_id] + ids + tail, dtype=dtype) for ids in self._document_ids(texts)]
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        return (np.concatenate(docs).tobytes() if docs else b""), lengths


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model file (the LLaMA-2 `tokenizer.model` format). `encode_packed` uses the exact
    segment cache of data/spm_fast.py (`fast`) when the model qualifies, else sentencepiece's batch encoder."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self.path = str(path)
        try:
            with open(self.path, "rb") as f:
                model = f.read()
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"tokenizer {self.path} is not a readable sentencepiece model: "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        self.vocab_size = int(self._sp.get_piece_size())
        bos, eos = int(self._sp.bos_id()), int(self._sp.eos_id())
        if bos < 0:
            raise TokenizerError(f"tokenizer {self.path} defines no BOS token (bos_id=-1)")
        self.bos_id = bos
        self.eos_id = eos if eos >= 0 else None
        self._model, self._fast, self._chars_seen = model, None, 0

    SMALL_INPUT_CHARS = 1 << 16
    """The first this many characters given to encode_packed go to sentencepiece directly: building the segment
    cache costs about 0.2 s, which a tiny input would only pay for (the ids are the same either way)."""

    @property
    def fast(self):
        """The exact segment cache (data/spm_fast.py), built on first use; None when the model does not qualify."""
        if self._model is not None:
            from .spm_fast import SegmentCachedEncoder

            model, self._model = self._model, None
            try:
                self._fast = SegmentCachedEncoder.create(model)
            except (ValueError, IndexError, UnicodeDecodeError):  # a field layout the wire reader does not know
                self._fast = None
        return self._fast

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _document_ids(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def encode_packed(self, texts: list[str], dtype, append_eos: bool = False) -> tuple[bytes, np.ndarray]:
        self._chars_seen += sum(map(len, texts))
        if (self._model is not None and self._chars_seen < self.SMALL_INPUT_CHARS) or self.fast is None:
            return super().encode_packed(texts, dtype, append_eos)
        if append_eos and self.eos_id is None:
            raise TokenizerError(f"tokenizer {self.path} has no EOS token but append_eos was asked")
        return self.fast.encode_packed(texts, dtype, [self.bos_id], [self.eos_id] if append_eos else [])

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(list(ids))


class HFTokenizer(Tokenizer):
    """A HF fast tokenizer (`tokenizer.json`, optionally with `tokenizer_config.json` naming BOS/EOS)."""

    def __init__(self, json_path: Path, config_path: Optional[Path] = None):
        from tokenizers import Tokenizer as _Tok

        self.path = str(json_path)
        try:
            self._tok = _Tok.from_file(self.path)
        except Exception as err:  # tokenizers raises a plain Exception on bad JSON
            raise TokenizerError(f"tokenizer {self.path} is not a readable tokenizer.json: "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        named = _special_tokens_from_config(config_path) if config_path else {}
        if named.get("split_special_tokens") is True:  # literal special-token text is text (exports of ours)
            self._tok.encode_special_tokens = True
        self.bos_id = self._find(named.get("bos_token"), _BOS_NAMES)
        if self.bos_id is None:
            raise TokenizerError(f"tokenizer {self.path} has no BOS token (looked for {', '.join(_BOS_NAMES)})")
        self.eos_id = self._find(named.get("eos_token"), _EOS_NAMES)

    def _find(self, configured: Optional[str], fallbacks: tuple) -> Optional[int]:
        for name in ([configured] if configured else []) + list(fallbacks):
            idx = self._tok.token_to_id(name)
            if idx is not None:
                return int(idx)
        return None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _document_ids(self, texts: list[str]) -> list[list[int]]:
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # _fast: tokenizers >= 0.20.1
        return [e.ids for e in batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def _special_tokens_from_config(path: Path) -> dict:
    """bos_token / eos_token strings from a tokenizer_config.json (values may be str or {"content": str}), and its
    split_special_tokens flag."""
    if not path.is_file():
        return {}
    from ..structured import read_json

    data = read_json(path, expect=dict, error=TokenizerError, what="tokenizer config")
    out = {"split_special_tokens": data.get("split_special_tokens")}
    for key in ("bos_token", "eos_token"):
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Open a sentencepiece `.model`, a `tokenizer.json`, or a HF directory holding either."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer {p} does not exist")
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return HFTokenizer(p / "tokenizer.json", p / "tokenizer_config.json")
        if (p / "tokenizer.model").is_file():
            return SentencePieceTokenizer(str(p / "tokenizer.model"))
        raise TokenizerError(f"tokenizer directory {p} holds neither tokenizer.json nor tokenizer.model")
    if p.suffix == ".json":
        return HFTokenizer(p, p.with_name("tokenizer_config.json"))
    return SentencePieceTokenizer(str(p))
