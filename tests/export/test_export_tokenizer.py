"""Exports carry a complete tokenizer: tokenizer.json built from the sentencepiece model (no protobuf) encodes
exactly like sentencepiece, and `AutoTokenizer.from_pretrained(export)` gives sentencepiece's ids for every export
format; files the source already had are carried unchanged; what cannot be written is refused before any output."""
import ast
import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoTokenizer, GenerationConfig

from _moe_helpers import save_state
from _tok_helpers import EDGE, UNICODE, VARIANTS, mixed_texts, train_spm
from megatron_moe.config import Config, ModelConfig, MoEConfig
from megatron_moe.data import load_tokenizer
from megatron_moe.data.spm_spec import read_spm_spec
from megatron_moe.data.spm_to_hf import spm_to_tokenizers
from megatron_moe.export import ExportError, export_hf
from megatron_moe.model import build_model, init_weights

TEXTS = mixed_texts()


@pytest.fixture(scope="module")
def spms(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    return {name: train_spm(root / f"{name}.model", **opts) for name, opts in VARIANTS.items()}


# ------------------------------------------------------------------------------------ the spec reader
def _reference_model_proto():
    """sentencepiece's own schema (the serialized descriptor inside its generated module), parsed by protobuf's
    runtime in a private pool: the independent reader our wire-format reader must agree with."""
    import sentencepiece
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    src = (Path(sentencepiece.__file__).parent / "sentencepiece_model_pb2.py").read_text()
    call = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)
                and getattr(n.func, "attr", "") == "AddSerializedFile")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(call.args[0].value))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sentencepiece.ModelProto"))


def test_spec_reader_agrees_with_protobuf_and_the_trainer(spms, tmp_path):
    ModelProto = _reference_model_proto()
    user = train_spm(tmp_path / "user.model", model_type="bpe", user_defined_symbols=["<tool>", "@@"], pad_id=3,
                     treat_whitespace_as_suffix=True, pretokenization_delimiter="|")
    for name, path in {**spms, "user": user}.items():
        ref = ModelProto.FromString(path.read_bytes())
        spec = read_spm_spec(path)
        t, n = ref.trainer_spec, ref.normalizer_spec
        assert spec.model_type == {1: "unigram", 2: "bpe"}[t.model_type], name
        for field in ("byte_fallback", "treat_whitespace_as_suffix", "split_digits", "allow_whitespace_only_pieces",
                      "pretokenization_delimiter", "unk_id", "bos_id", "eos_id", "pad_id"):
            assert getattr(spec, field) == getattr(t, field), (name, field)
        assert (spec.normalizer_name, spec.charsmap) == (n.name, n.precompiled_charsmap), name
        for field in ("add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces"):
            assert getattr(spec, field) == getattr(n, field), (name, field)
        assert spec.user_defined == tuple(p.piece for p in ref.pieces if p.type == 4), name
    # and the values are the options the models were trained with (not only what both readers agree on)
    llama2, ours, user_spec = read_spm_spec(spms["llama2"]), read_spm_spec(spms["ours"]), read_spm_spec(user)
    assert (llama2.normalizer_name, llama2.charsmap, llama2.remove_extra_whitespaces, llama2.byte_fallback,
            llama2.split_digits) == ("identity", b"", False, True, True)
    assert ours.normalizer_name == "nmt_nfkc" and len(ours.charsmap) > 1000 and ours.remove_extra_whitespaces
    assert read_spm_spec(spms["no-prefix"]).add_dummy_prefix is False
    assert read_spm_spec(spms["unigram"]).model_type == "unigram"
    assert user_spec.user_defined == ("<tool>", "@@") and user_spec.pad_id == 3
    assert user_spec.treat_whitespace_as_suffix and user_spec.pretokenization_delimiter == "|"


# ------------------------------------------------------------------------------ tokenizer.json itself
@pytest.mark.parametrize("variant", ["ours", "ours-bytes", "llama2", "no-prefix"])
def test_bpe_tokenizer_json_encodes_and_decodes_like_sentencepiece(spms, variant):
    sp = spm.SentencePieceProcessor(model_file=str(spms[variant]))
    tok = spm_to_tokenizers(spms[variant])
    n_tokens = 0
    for text in TEXTS:
        want = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False).ids == want, (variant, text[:60])
        assert tok.encode(text).ids == [sp.bos_id()] + want
        if sp.unk_id() not in want:  # sentencepiece decodes <unk> as " ⁇ ", HF as "<unk>"
            assert tok.decode(want) == sp.decode(want), (variant, text[:60])
        n_tokens += len(want)
    assert n_tokens > 100_000
    if variant in ("ours-bytes", "llama2"):  # the emoji are outside the vocabulary: byte pieces, not <unk>
        assert sp.piece_to_id("<0xF0>") in sp.encode("😀") and sp.unk_id() not in sp.encode(UNICODE)


def test_unigram_tokenizer_json_differs_only_on_exact_ties(spms):
    """HF's Viterbi may break a tie between two segmentations of equal total score differently; nothing else."""
    sp = spm.SentencePieceProcessor(model_file=str(spms["unigram"]))
    tok = spm_to_tokenizers(spms["unigram"])
    lines = [line for text in TEXTS if "<s>" not in text and "</s>" not in text for line in text.splitlines()]
    differ = 0
    for line in lines:
        want, got = sp.encode(line), tok.encode(line, add_special_tokens=False).ids
        if got != want:
            differ += 1
            assert sp.decode(got) == sp.decode(want)  # the same text
            assert sum(sp.get_score(i) for i in got) == pytest.approx(sum(sp.get_score(i) for i in want), abs=1e-6)
    assert len(lines) > 5000 and differ <= len(lines) // 500


# ------------------------------------------------------------------------------ exports
def _checkpoint(path: Path, vocab: int, moe: bool, tokenizer: Path = None, **files) -> Path:
    model_cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            vocab_size=vocab, max_seq_len=64)
    moe_cfg = MoEConfig(num_experts=4, top_k=2, use_kernels="off") if moe else MoEConfig()
    model = build_model(Config(model=model_cfg, moe=moe_cfg))
    init_weights(model, seed=0, std=0.02)
    save_state(model.state_dict(), model_cfg, moe_cfg, path)
    if tokenizer is not None:
        (path / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    for name, content in files.items():
        (path / name.replace("__", ".")).write_text(content)
    return path


@pytest.fixture(scope="module")
def exports(spms, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    moe = _checkpoint(root / "moe", 640, True, spms["ours-bytes"])
    dense = _checkpoint(root / "dense", 640, False, spms["ours-bytes"])
    out = {fmt: export_hf(moe, root / fmt, fmt) for fmt in ("mixtral", "qwen2-moe", "llama-moe")}
    out["llama"] = export_hf(dense, root / "llama", "llama")
    return out


@pytest.mark.parametrize("fmt", ["mixtral", "qwen2-moe", "llama-moe", "llama"])
def test_every_export_loads_with_autotokenizer_and_gives_sentencepiece_ids(spms, exports, fmt):
    out = exports[fmt]
    sp = spm.SentencePieceProcessor(model_file=str(spms["ours-bytes"]))
    hf = AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(out)  # megatron_moe.data.tokenizer reads the export's tokenizer.json
    for text in TEXTS:
        want = sp.encode(text)
        assert hf(text)["input_ids"] == [1] + want, (fmt, text[:60])
        assert hf.encode(text, add_special_tokens=False) == want
        assert ours.encode(text) == want
    assert (hf.bos_token, hf.eos_token, hf.unk_token, hf.pad_token) == ("<s>", "</s>", "<unk>", "<unk>")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.model_max_length) == (1, 2, 0, 64)
    gen = GenerationConfig.from_pretrained(out)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    assert json.loads((out / "special_tokens_map.json").read_text()) == {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    assert (out / "tokenizer.model").read_bytes() == spms["ours-bytes"].read_bytes()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / name).read_bytes() == (exports["mixtral"] / name).read_bytes(), name  # one writer


def test_files_the_source_has_are_carried_unchanged(spms, tmp_path):
    from tokenizers import Tokenizer

    # a tokenizer.json that differs from the one we would write (no post-processor), a slow-class config and a
    # generation config with sampling defaults, as released LLaMA-2 checkpoints have
    theirs = Tokenizer.from_str(spm_to_tokenizers(spms["llama2"], add_bos=False).to_str())
    tok_json = theirs.to_str()
    cfg = json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                      "add_bos_token": True, "legacy": False, "custom": 7})
    gen = json.dumps({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6, "top_p": 0.9, "do_sample": True})
    ck = _checkpoint(tmp_path / "ck", 640, True, spms["llama2"], tokenizer__json=tok_json,
                     tokenizer_config__json=cfg, generation_config__json=gen)
    out = export_hf(ck, tmp_path / "hf", "mixtral")
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (ck / name).read_bytes(), name
    assert json.loads((out / "special_tokens_map.json").read_text())["bos_token"] == "<s>"  # was missing: written
    assert GenerationConfig.from_pretrained(out).temperature == 0.6
    sp = spm.SentencePieceProcessor(model_file=str(spms["llama2"]))
    hf = AutoTokenizer.from_pretrained(out)  # transformers' LLaMA tokenizer class over the carried files
    for text in [UNICODE.replace("<s>", "").replace("</s>", "").replace("<unk>", "")] + TEXTS[:3] + EDGE[5:10]:
        assert hf.encode(text, add_special_tokens=False) == sp.encode(text), text[:60]


def test_dense_import_that_lacked_tokenizer_files_exports_them(spms, tmp_path):
    """The demo's path: an HF LLaMA directory with only tokenizer.model -> import -> export llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_moe.construct.import_dense import import_dense

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=640, max_position_embeddings=64,
                                 tie_word_embeddings=False)).save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "tokenizer.model").write_bytes(spms["llama2"].read_bytes())
    import_dense(tmp_path / "src", tmp_path / "ck", progress=False)
    out = export_hf(tmp_path / "ck", tmp_path / "hf", "llama")
    # transformers wrote generation_config.json into the source: carried through import and export unchanged
    assert (out / "generation_config.json").read_bytes() == (tmp_path / "src" / "generation_config.json").read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(spms["llama2"]))
    hf = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert hf(text)["input_ids"] == [1] + sp.encode(text), text[:60]


def test_refused_before_anything_is_written(spms, tmp_path):
    def refused(ck, match):
        with pytest.raises(ExportError, match=match):
            export_hf(ck, tmp_path / "out", "mixtral")
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))

    user = train_spm(tmp_path / "user.model", model_type="bpe", user_defined_symbols=["<tool>"])
    refused(_checkpoint(tmp_path / "a", 640, True, user), "user-defined pieces .<tool>.*next to the tokenizer.model")
    refused(_checkpoint(tmp_path / "b", 320, True, spms["ours"]), "tokenizer has 600 tokens but the model's vocab")
    shifted = train_spm(tmp_path / "shift.model", model_type="bpe", bos_id=2, eos_id=1)
    refused(_checkpoint(tmp_path / "c", 640, True, shifted), "bos_token_id=1 but tokenizer.model's bos id is 2")
    refused(_checkpoint(tmp_path / "d", 640, True, None, tokenizer__json="{not json"), "not a readable tokenizer.json")
    (tmp_path / "garbage.model").write_bytes(b"spm")
    refused(_checkpoint(tmp_path / "e", 640, True, tmp_path / "garbage.model"), "not a readable sentencepiece model")
