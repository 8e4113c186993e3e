"""The segment-cached sentencepiece encoder (data/spm_fast.py) gives sentencepiece's own ids, and is used only for
models where that holds; the model-file reader agrees with what sentencepiece's trainer was told."""
import io
import itertools

import numpy as np
import pytest
import sentencepiece as spm

from megatron_moe.data.local_corpus import EDGE_CASE_DOCUMENTS, iter_mixed_documents
from megatron_moe.data.spm_fast import (SegmentCachedEncoder, _segment_regex, model_spec, why_not_exact,
                                        without_dummy_prefix)
from megatron_moe.data.spm_train import train_sentencepiece
from megatron_moe.data.tokenizer import load_tokenizer


def _mixed(n_bytes: int) -> list[str]:
    out, size = [], 0
    for text in iter_mixed_documents():
        out.append(text)
        size += len(text.encode())
        if size >= n_bytes:
            return out
    return out


@pytest.fixture(scope="module")
def corpus():
    """About 3 MB: edge cases, code (indentation runs), reST/Markdown prose, unicode from the stdlib's tests."""
    return _mixed(3 << 20)


@pytest.fixture(scope="module")
def llama_style(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("spm") / "llama_style.model"
    return str(train_sentencepiece(corpus[:400], path, vocab_size=3000, llama_style=True, max_sentences=60_000))


def _unpack(data: bytes, lengths, dtype) -> list[list[int]]:
    flat = np.frombuffer(data, dtype=dtype)
    return [a.tolist() for a in np.split(flat, np.cumsum(lengths)[:-1])] if len(lengths) else []


def test_ids_identical_to_sentencepiece_on_mixed_corpus(llama_style, corpus):
    sp = spm.SentencePieceProcessor(model_file=llama_style)
    enc = SegmentCachedEncoder.create(open(llama_style, "rb").read())
    assert enc is not None
    # whitespace runs of every length next to words, tabs and newlines, and literal U+2581 characters
    runs = ["".join(p) for p in itertools.product([" ", "  ", "   ", "\t", "\n", "▁", "x", "é", "7"], repeat=3)]
    texts = corpus + runs + [" " * n + "word" + " " * n for n in range(1, 40)]
    data, lengths = enc.encode_packed(texts, np.int32, prefix=[1], suffix=[2])
    got = _unpack(data, lengths, np.int32)
    want = [[1] + ids + [2] for ids in sp.encode(texts)]
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"{len(bad)} of {len(texts)} documents differ, first {texts[bad[0]][:80]!r}"
    assert sum(map(len, want)) > 500_000
    # the cache is warm now: a second pass, in uint16, gives the same ids
    data16, lengths16 = enc.encode_packed(texts[:50], np.uint16, prefix=[1])
    assert _unpack(data16, lengths16, np.uint16) == [w[:-1] for w in want[:50]]


def test_cache_overflow_starts_over_with_the_same_ids(llama_style):
    sp = spm.SentencePieceProcessor(model_file=llama_style)
    enc = SegmentCachedEncoder.create(open(llama_style, "rb").read())
    enc._max = 50
    texts = EDGE_CASE_DOCUMENTS * 3
    data, lengths = enc.encode_packed(texts, np.int32)
    assert _unpack(data, lengths, np.int32) == sp.encode(texts)
    assert len(enc._cache) <= 50 + max(len(enc._re.findall(" " + t)) for t in texts)


def test_model_spec_reads_what_the_trainer_wrote(llama_style, spm_model):
    sp = spm.SentencePieceProcessor(model_file=llama_style)
    spec = model_spec(open(llama_style, "rb").read())
    assert [p for p, _ in spec["pieces"]] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert [k == 6 for _, k in spec["pieces"]] == [sp.is_byte(i) for i in range(sp.get_piece_size())]
    assert (spec["model_type"], spec["byte_fallback"], spec["name"], spec["add_dummy_prefix"],
            spec["remove_extra_whitespaces"]) == (2, True, "identity", True, False)
    default = model_spec(open(spm_model, "rb").read())  # spm_train's defaults: nmt_nfkc, extra whitespace removed
    assert (default["name"], default["remove_extra_whitespaces"], default["byte_fallback"]) == \
        ("nmt_nfkc", True, False)
    assert why_not_exact(default) == "normalisation 'nmt_nfkc' is not identity"
    # the copy without dummy prefix tokenizes " " + text as the original tokenizes text
    plain = spm.SentencePieceProcessor(model_proto=without_dummy_prefix(open(llama_style, "rb").read()))
    for text in EDGE_CASE_DOCUMENTS:
        assert plain.encode(" " + text) == sp.encode(text)
    assert plain.encode("word") != sp.encode("word")


def test_models_that_do_not_qualify_use_sentencepiece(tmp_path, corpus, spm_model):
    texts = corpus[:200]
    assert load_tokenizer(spm_model).fast is None  # nmt_nfkc
    # trained without whitespace splitting, pieces such as "▁▁self" span a space: cutting there would be wrong
    lines = [t for d in texts for t in d.splitlines() if t.strip()]
    common = dict(vocab_size=1500, model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                  remove_extra_whitespaces=False, minloglevel=2, hard_vocab_limit=False)
    models = {}
    for name, extra, reason in (("joined", dict(split_by_whitespace=False),
                                 "a piece joins a character with the following whitespace"),
                                ("custom", dict(user_defined_symbols=["<tool>"]), "user-defined or unused pieces")):
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **common, **extra)
        assert why_not_exact(model_spec(model.getvalue())) == reason
        models[name] = model.getvalue()
    # ... and the check is needed: the segment cache forced onto that model gives other ids than sentencepiece
    sp_joined = spm.SentencePieceProcessor(model_proto=models["joined"])
    forced = SegmentCachedEncoder(spm.SentencePieceProcessor(model_proto=without_dummy_prefix(models["joined"])),
                                  _segment_regex(model_spec(models["joined"])))
    data, lengths = forced.encode_packed(texts[:50], np.int32)
    assert _unpack(data, lengths, np.int32) != sp_joined.encode(texts[:50])
    tok_path = tmp_path / "custom.model"
    tok_path.write_bytes(models["joined"])
    tok = load_tokenizer(tok_path)
    assert tok.fast is None
    data, lengths = tok.encode_packed(texts[:20], np.int32, append_eos=True)
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    assert _unpack(data, lengths, np.int32) == [[tok.bos_id] + ids + [tok.eos_id] for ids in sp.encode(texts[:20])]


@pytest.mark.slow
def test_ids_identical_at_llama_size(tmp_path):
    """32000 pieces (LLaMA-2's size) on 30 MB of the mixed corpus."""
    texts = _mixed(30 << 20)
    path = train_sentencepiece(texts, tmp_path / "tok.model", vocab_size=32000, llama_style=True,
                               max_sentences=300_000)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    enc = SegmentCachedEncoder.create(path.read_bytes())
    data, lengths = enc.encode_packed(texts, np.uint16)
    assert _unpack(data, lengths, np.uint16) == sp.encode(texts)


def test_preprocess_with_llama_style_model_equals_sentencepiece(llama_style, corpus, tmp_path):
    """Through the command's path: the first 64 Ki characters go to sentencepiece directly, the rest through the
    segment cache (built on first use), in 1 and 2 worker processes; every document is sentencepiece's ids."""
    import json

    from megatron_moe.data._mcore import IndexedDataset
    from megatron_moe.data.preprocess import preprocess_files

    texts = corpus[:150]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    sp = spm.SentencePieceProcessor(model_file=llama_style)
    want = [[sp.bos_id()] + ids + [sp.eos_id()] for ids in sp.encode([t for t in texts if t.strip()])]
    assert sum(map(len, texts)) > 4 * (1 << 16)
    for workers in (1, 2):
        preprocess_files([src], llama_style, tmp_path / f"w{workers}", workers=workers, chunk_lines=8,
                         append_eos=True, progress=False)
        ds = IndexedDataset(str(tmp_path / f"w{workers}"))
        assert [ds[i].tolist() for i in range(len(ds))] == want
    tok = load_tokenizer(llama_style)
    tok.encode_packed(["tiny"], np.uint16)
    assert tok._fast is None and tok._model is not None  # not built for a tiny input
    assert tok.fast is not None
