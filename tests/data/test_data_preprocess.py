"""Tokenize -> indexed dataset -> read back with megatron-core's IndexedDataset; bad inputs; the CLI."""
import json
import os
import sys

import numpy as np
import pytest
import sentencepiece as spm

from megatron_moe.cli import run_command
from megatron_moe.data._mcore import IndexedDataset
from megatron_moe.data.preprocess import PreprocessError, preprocess_files
from megatron_moe.data.tokenizer import TokenizerError, load_tokenizer

from _data_helpers import SENTENCES



def write_jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_round_trip_sentencepiece(tmp_path, spm_model):
    texts = SENTENCES * 3
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    stats = preprocess_files([src], spm_model, tmp_path / "out" / "ds", progress=False)
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    expected = [[1] + sp.encode(t) for t in texts]  # LLaMA layout: BOS=1 first, no EOS
    ds = IndexedDataset(str(tmp_path / "out" / "ds"))
    assert len(ds) == len(texts) == stats.documents
    assert ds.index.dtype == np.uint16
    for i, want in enumerate(expected):
        assert ds[i].tolist() == want
    assert stats.tokens == sum(map(len, expected))
    assert sorted(os.listdir(tmp_path / "out")) == ["ds.bin", "ds.idx"]  # no temporaries left


def test_workers_give_identical_bytes_and_eos(tmp_path, spm_model):
    src = write_jsonl(tmp_path / "in.jsonl", [f"{s} {i}" for i in range(30) for s in SENTENCES])
    preprocess_files([src], spm_model, tmp_path / "one", workers=1, chunk_lines=7, append_eos=True, progress=False)
    preprocess_files([src], spm_model, tmp_path / "two", workers=2, chunk_lines=7, append_eos=True, progress=False)
    for ext in ("bin", "idx"):
        assert (tmp_path / f"one.{ext}").read_bytes() == (tmp_path / f"two.{ext}").read_bytes()
    ds = IndexedDataset(str(tmp_path / "two"))
    assert len(ds) == 180 and ds[0][0] == 1 and ds[0][-1] == 2 and ds[179][-1] == 2


def test_txt_input_and_hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "moe": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (tmp_path / "in.txt").write_text("hello world\n\nmoe hello unknown\n")
    for spec in (hf_dir, hf_dir / "tokenizer.json"):
        stats = preprocess_files([tmp_path / "in.txt"], spec, tmp_path / "ds", append_eos=True, progress=False,
                                 overwrite=True)
        ds = IndexedDataset(str(tmp_path / "ds"))
        assert stats.documents == 2
        assert ds[0].tolist() == [1, 3, 4, 2] and ds[1].tolist() == [1, 5, 3, 0, 2]


def test_bad_lines_name_file_and_line(tmp_path, spm_model):
    lines = ['{"text": "fine"}', "", '{"text": "also fine"}', '{"text": broken', '["not", "object"]',
             '{"body": "no text key"}', '{"text": 7}']
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreprocessError, match=r"bad\.jsonl:4: malformed JSON"):
        preprocess_files([src], spm_model, tmp_path / "ds", progress=False)
    assert not list(tmp_path.glob("ds*"))  # nothing half-written
    stats = preprocess_files([src], spm_model, tmp_path / "ds", skip_bad_lines=True, chunk_lines=2, progress=False)
    assert (stats.documents, stats.bad_lines) == (2, 4)
    src.write_text('{"text": "a"}\n{"body": "x"}\n')
    with pytest.raises(PreprocessError, match=r"bad\.jsonl:2: missing key 'text' \(keys: body\)"):
        preprocess_files([src], spm_model, tmp_path / "ds2", progress=False)


def test_empty_input_and_bad_tokenizers(tmp_path, spm_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PreprocessError, match=r"empty\.jsonl: empty input"):
        preprocess_files([empty], spm_model, tmp_path / "ds", progress=False)
    src = write_jsonl(tmp_path / "in.jsonl", ["x"])
    with pytest.raises(TokenizerError, match=r"nope\.model does not exist"):
        preprocess_files([src], tmp_path / "nope.model", tmp_path / "ds", progress=False)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00not a model")
    with pytest.raises(TokenizerError, match=r"garbage\.model is not a readable sentencepiece model"):
        load_tokenizer(garbage)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TokenizerError, match=r"bad\.json is not a readable tokenizer\.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_cli_exit_code_and_one_line(tmp_path, spm_model, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "ok"}\n{"text": oops}\n')
    argv = ["--input", str(src), "--tokenizer", spm_model, "--output-prefix", str(tmp_path / "o"), "--no-progress"]
    assert run_command("preprocess", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {src}:2: malformed JSON (Expecting value at column 10)"]
    assert run_command("preprocess", argv + ["--skip-bad-lines"]) == 0
    assert len(IndexedDataset(str(tmp_path / "o"))) == 1
    assert run_command("preprocess", ["--input", str(src), "--tokenizer", str(tmp_path / "missing"),
                                 "--output-prefix", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: tokenizer {tmp_path / 'missing'} does not exist"


def test_train_tokenizer_cli(tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text("\n".join(f"{s} {i}" for i in range(20) for s in SENTENCES) + "\n")
    out = tmp_path / "tok.model"
    assert run_command("train-tokenizer", ["--input", str(src), "--output", str(out), "--vocab-size", "100"]) == 0
    tok = load_tokenizer(out)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (100, 1, 2)
    assert tok.decode(tok.encode("the quick brown fox")) == "the quick brown fox"
    assert run_command("train-tokenizer", ["--input", str(tmp_path / "none.txt"), "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: input {tmp_path / 'none.txt'} does not exist"


def test_sentencepiece_training_is_reproducible_across_processes(tmp_path):
    """More lines than max_sentences, so lines are sampled: two processes with the same texts and seed train the
    same model (sentencepiece's own sampling differed between processes)."""
    import subprocess

    script = (
        "import random, sys\n"
        "from megatron_moe.data.spm_train import train_sentencepiece\n"
        "rng = random.Random(0)\n"
        "words = [''.join(rng.choice('abcdefghij') for _ in range(rng.randint(2, 7))) for _ in range(400)]\n"
        "texts = [' '.join(rng.choice(words) for _ in range(12)) for _ in range(4000)]\n"
        "train_sentencepiece(texts, sys.argv[1], vocab_size=200, max_sentences=500)\n")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.model")], check=True)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
