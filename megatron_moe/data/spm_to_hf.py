"""A HF fast tokenizer (`tokenizer.json`) that encodes exactly like a sentencepiece `.model`, built with the
`tokenizers` library from the pieces, scores and types the sentencepiece library reports and the options
data/spm_spec.py reads. No protobuf, no transformers converter.

    tok = spm_to_tokenizers("tokenizer.model")        # tokenizers.Tokenizer
    tok.encode(text, add_special_tokens=False).ids    # == SentencePieceProcessor.encode(text)
    tok.encode(text).ids                              # BOS first (the LLaMA convention; `add_bos=False` to drop)

The pipeline mirrors sentencepiece's encoder:
  normalizer     the compiled normalization table (`Precompiled`; none for `identity`), then, when the model
                 removes extra whitespace, leading/trailing spaces dropped and runs of spaces made one, then the
                 dummy prefix `▁` and every space written as `▁`
  model          BPE with merges ranked by the merged piece's score (sentencepiece merges the adjacent pair whose
                 result scores highest), or Unigram with the pieces' scores; byte fallback as the model says
  special tokens the control and unknown pieces; for BPE, text is never matched against them
                 (`encode_special_tokens`): sentencepiece reads a literal "<s>" in text as characters, so do we.
                 Unigram keeps the usual HF matching (its lattice would otherwise find "<s>" as a piece), and HF's
                 Viterbi may break an exact tie between equal-score segmentations differently
  post-processor BOS before the text (and before each text of a pair)
  decoder        `▁` back to spaces, byte pieces to UTF-8, the dummy prefix's space removed

What cannot be written this way raises TokenizerError naming the option (word/char models, suffix whitespace,
user-defined or unused pieces, a denormalization rule); carry a `tokenizer.json` made for such a model instead.
"""
from __future__ import annotations

import json
from pathlib import Path

from .spm_spec import SpmSpec, read_spm_spec
from .tokenizer import TokenizerError

SPACE = "\u2581"  # ▁, sentencepiece's space marker


def sentencepiece_pieces(path: str | Path):
    """[(piece, score, kind)] with kind normal | unknown | control | byte | unused | user_defined."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as err:
        raise TokenizerError(f"tokenizer {path} is not a readable sentencepiece model: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    out = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            kind = "unknown"
        elif sp.is_control(i):
            kind = "control"
        elif sp.is_byte(i):
            kind = "byte"
        elif sp.is_unused(i):
            kind = "unused"
        else:
            kind = "normal"
        out.append((sp.id_to_piece(i), float(sp.get_score(i)), kind))
    return sp, out


def _check(path, spec: SpmSpec, pieces) -> None:
    why = None
    if spec.model_type not in ("bpe", "unigram"):
        why = f"model type {spec.model_type}"
    elif spec.treat_whitespace_as_suffix:
        why = "treat_whitespace_as_suffix"
    elif not spec.escape_whitespaces:
        why = "escape_whitespaces: false"
    elif spec.has_denormalizer:
        why = "a denormalization rule"
    elif any(k == "unused" for _, _, k in pieces):
        why = "unused pieces"
    elif spec.user_defined:
        why = f"user-defined pieces ({', '.join(spec.user_defined[:3])})"
    if why:
        raise TokenizerError(f"tokenizer {path}: cannot write a tokenizer.json for a sentencepiece model with {why}; "
                             f"put a tokenizer.json made for it next to the tokenizer.model")


def _merges(pieces) -> list[tuple[str, str]]:
    """BPE merges from the vocabulary: every split of a normal piece into two pieces of the vocabulary, ranked by
    the merged piece's score (highest first), then by its id."""
    vocab = {p: i for i, (p, _, k) in enumerate(pieces) if k in ("normal", "unknown")}
    ranked = []
    for i, (piece, score, kind) in enumerate(pieces):
        if kind != "normal" or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, i, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def spm_to_tokenizers(path: str | Path, add_bos: bool = True):
    """A `tokenizers.Tokenizer` equivalent to the sentencepiece model at `path` (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

    spec = read_spm_spec(path)
    _, pieces = sentencepiece_pieces(path)
    _check(path, spec, pieces)
    unk_id = next((i for i, (_, _, k) in enumerate(pieces) if k == "unknown"), None)
    unk = pieces[unk_id][0] if unk_id is not None else None
    if spec.model_type == "bpe":
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        model = models.BPE(vocab=vocab, merges=_merges(pieces), unk_token=unk, fuse_unk=True,
                           byte_fallback=spec.byte_fallback, dropout=None)
    else:
        model = models.Unigram([(p, s) for p, s, _ in pieces], unk_id=unk_id, byte_fallback=spec.byte_fallback)
    tok = Tokenizer(model)

    steps = [normalizers.Precompiled(spec.charsmap)] if spec.charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    steps.append(normalizers.Replace(" ", SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None

    specials = [p for p, _, k in pieces if k in ("control", "unknown")]
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    # BPE never builds a control piece from text, so text can bypass the special-token matcher; Unigram's lattice
    # would find "<s>" as a piece (score 0), so there literal control-token text stays the special token.
    tok.encode_special_tokens = spec.model_type == "bpe"

    dec = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)

    bos = pieces[spec.bos_id][0] if 0 <= spec.bos_id < len(pieces) else None
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, spec.bos_id)])
    return tok


def special_pieces(path: str | Path) -> dict[str, str | None]:
    """{"bos", "eos", "unk", "pad"} -> piece string (None when the model defines none)."""
    spec = read_spm_spec(path)
    _, pieces = sentencepiece_pieces(path)

    def piece(i: int):
        return pieces[i][0] if 0 <= i < len(pieces) else None

    return {"bos": piece(spec.bos_id), "eos": piece(spec.eos_id), "unk": piece(spec.unk_id),
            "pad": piece(spec.pad_id)}


def tokenizer_json(path: str | Path) -> str:
    """The `tokenizer.json` text of the sentencepiece model at `path`."""
    return json.dumps(json.loads(spm_to_tokenizers(path).to_str()), ensure_ascii=False, indent=2) + "\n"
