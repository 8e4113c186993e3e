"""The tokenizer side of an HF export: what `AutoTokenizer.from_pretrained(export)` and `generate` need.

    files = tokenizer_files(ckpt, model_cfg)   # checked before any weight is converted
    files.write(staging_dir)                   # the export's directory while it is written
    files.carried, files.written               # file names

Files the checkpoint carries (tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
added_tokens.json, generation_config.json: copied in by import/convert/train) go out unchanged. The missing ones
are written:
  tokenizer.json           from tokenizer.model (data/spm_to_hf.py: encodes exactly like sentencepiece)
  tokenizer_config.json    PreTrainedTokenizerFast (transformers 4.x and 5.x load it from tokenizer.json alone),
                           the special tokens, model_max_length = model.max_seq_len
  special_tokens_map.json  bos/eos/unk/pad
  generation_config.json   bos/eos/pad ids of the model config
Special tokens are the model config's bos/eos ids, named by the tokenizer; pad is the tokenizer's pad piece, else
its unk piece (LLaMA-2's released generation_config pads with 0 = <unk>), else eos. A tokenizer whose BOS or EOS
id differs from the model config's, or whose vocabulary is larger than the model's embedding, is an ExportError.
A checkpoint without any tokenizer is exported without tokenizer files (and a warning).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..checkpoint.format import TOKENIZER_FILES
from ..data.tokenizer import TokenizerError
from ..formats import ExportError

log = logging.getLogger(__name__)
GENERATION_CONFIG = "generation_config.json"


def _eos_ids(model_cfg) -> list[int]:
    eos = model_cfg.eos_token_id
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


class _Vocab:
    """Token strings by id, and the special pieces, of the tokenizer a checkpoint carries."""

    def __init__(self, src: Path):
        self.spm = src / "tokenizer.model"
        self.json = src / "tokenizer.json"
        self.specials: dict[str, Optional[str]] = {}
        if self.json.is_file():
            from tokenizers import Tokenizer

            try:
                tok = Tokenizer.from_file(str(self.json))
            except Exception as err:  # tokenizers raises a plain Exception on bad JSON
                raise ExportError(f"{self.json}: not a readable tokenizer.json ({str(err).splitlines()[0]})") from None
            self.size = tok.get_vocab_size(with_added_tokens=True)
            self.token, self.id_of = tok.id_to_token, tok.token_to_id
            unk = getattr(tok.model, "unk_token", None)
            self.specials = {"unk": unk if unk and tok.token_to_id(unk) is not None else None, "pad": None}
        else:
            from ..data.spm_to_hf import sentencepiece_pieces, special_pieces

            sp, _ = sentencepiece_pieces(self.spm)
            self.size = sp.get_piece_size()
            self.token = lambda i: sp.id_to_piece(i) if 0 <= i < self.size else None
            self.id_of = lambda name: sp.piece_to_id(name) if sp.id_to_piece(sp.piece_to_id(name)) == name else None
            self.specials = {k: v for k, v in special_pieces(self.spm).items() if k in ("unk", "pad")}

    def name(self, idx: int, what: str, ckpt: Path) -> str:
        name = self.token(idx)
        if name is None:
            raise ExportError(f"{ckpt}: the model's {what}_token_id={idx} is not a token of its tokenizer "
                              f"({self.size} tokens)")
        return name


@dataclass
class TokenizerFiles:
    """What an export gets: files copied from the checkpoint, and new files by name (JSON objects or text)."""

    src: Path
    carried: list[str] = field(default_factory=list)
    new: dict[str, object] = field(default_factory=dict)

    @property
    def written(self) -> list[str]:
        return list(self.new)

    def write(self, dest: Path) -> None:
        """Copy and write the files into directory `dest` (an export's staging directory)."""
        import json
        import shutil

        for f in self.carried:
            shutil.copy2(self.src / f, Path(dest) / f)
        for name, content in self.new.items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False) + "\n"
            (Path(dest) / name).write_text(text, encoding="utf-8")


def tokenizer_files(src: str | Path, model_cfg) -> TokenizerFiles:
    """The tokenizer files of an export of checkpoint `src` (module docstring); ExportError when the tokenizer
    and the model disagree or tokenizer.json cannot be written."""
    src = Path(src)
    out = TokenizerFiles(src, carried=[f for f in TOKENIZER_FILES if (src / f).is_file()])
    have = set(out.carried)
    if not have & {"tokenizer.model", "tokenizer.json"}:
        log.warning("%s carries no tokenizer (tokenizer.model or tokenizer.json): the export has none either", src)
        if GENERATION_CONFIG not in have:
            out.new[GENERATION_CONFIG] = _generation_config(model_cfg, None)
        return out

    try:
        vocab = _Vocab(src)
    except TokenizerError as err:
        raise ExportError(str(err)) from None
    if vocab.size > model_cfg.vocab_size:
        raise ExportError(f"{src}: the tokenizer has {vocab.size} tokens but the model's vocabulary is "
                          f"{model_cfg.vocab_size}")
    bos = vocab.name(model_cfg.bos_token_id, "bos", src)
    eos = vocab.name(_eos_ids(model_cfg)[0], "eos", src)
    split_special = False
    if "tokenizer.json" not in have:
        from ..data.spm_spec import read_spm_spec
        from ..data.spm_to_hf import tokenizer_json

        spec = read_spm_spec(vocab.spm)
        for what, ours, theirs in (("bos", model_cfg.bos_token_id, spec.bos_id),
                                   ("eos", _eos_ids(model_cfg)[0], spec.eos_id)):
            if ours != theirs:
                raise ExportError(f"{src}: the model's {what}_token_id={ours} but tokenizer.model's {what} id is "
                                  f"{theirs}")
        try:
            out.new["tokenizer.json"] = tokenizer_json(vocab.spm)
        except TokenizerError as err:
            raise ExportError(str(err)) from None
        if spec.model_type == "unigram":
            log.warning("tokenizer.json of a unigram model: HF tokenizers may break an exact tie between two "
                        "segmentations of equal score differently from sentencepiece (docs/export.md)")
        split_special = spec.model_type == "bpe"
    unk = vocab.specials.get("unk")
    pad = vocab.specials.get("pad") or unk or eos
    specials = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad))
                if v is not None}
    if "tokenizer_config.json" not in have:
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "model_max_length": model_cfg.max_seq_len,
               "clean_up_tokenization_spaces": False}
        if split_special:
            cfg["split_special_tokens"] = True  # literal "<s>" in text is text, as in sentencepiece
        out.new["tokenizer_config.json"] = cfg
    if "special_tokens_map.json" not in have:
        out.new["special_tokens_map.json"] = specials
    if GENERATION_CONFIG not in have:
        out.new[GENERATION_CONFIG] = _generation_config(model_cfg, vocab.id_of(pad))
    return out


def _generation_config(model_cfg, pad_id: Optional[int]) -> dict:
    eos = model_cfg.eos_token_id
    out = {"bos_token_id": model_cfg.bos_token_id, "eos_token_id": list(eos) if isinstance(eos, (list, tuple)) else eos}
    if pad_id is not None:
        out["pad_token_id"] = pad_id
    return out

