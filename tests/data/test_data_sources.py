"""Corpora as distributed: compressed JSONL, parquet, datasets saved with HF `datasets`, globs and directories of
shards give the same tokens as the plain JSONL; bad files are one line naming the file, exit 2, nothing left.
Fixtures are written by the real libraries (gzip, zstandard, lzma, pyarrow, datasets)."""
import gzip
import json
import lzma

import numpy as np
import pytest
import sentencepiece as spm

from megatron_moe.cli import run_command
from megatron_moe.data._mcore import IndexedDataset, IndexedDatasetBuilder
from megatron_moe.data.indexed_writer import IndexedWriter
from megatron_moe.data.local_corpus import EDGE_CASE_DOCUMENTS
from megatron_moe.data.preprocess import PreprocessError, preprocess_files

from _data_helpers import SENTENCES

TEXTS = [f"{s} {i}" for i in range(12) for s in SENTENCES] + [t for t in EDGE_CASE_DOCUMENTS if t.strip()]


def _jsonl_bytes(texts, key="text"):
    return "".join(json.dumps({key: t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()


def _zstd(data: bytes, frames: int = 1) -> bytes:
    import zstandard

    step = -(-len(data) // frames)
    return b"".join(zstandard.ZstdCompressor(level=3).compress(data[i:i + step]) for i in range(0, len(data), step))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spm_model):
    """The plain JSONL's dataset, checked against sentencepiece read back with megatron-core's reader."""
    d = tmp_path_factory.mktemp("ref")
    src = d / "plain.jsonl"
    src.write_bytes(_jsonl_bytes(TEXTS))
    preprocess_files([src], spm_model, d / "ref", progress=False)
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    ds = IndexedDataset(str(d / "ref"))
    assert [ds[i].tolist() for i in range(len(ds))] == [[1] + sp.encode(t) for t in TEXTS]
    return {ext: (d / f"ref.{ext}").read_bytes() for ext in ("bin", "idx")}


def _same_as_reference(prefix, reference):
    for ext in ("bin", "idx"):
        assert (prefix.parent / f"{prefix.name}.{ext}").read_bytes() == reference[ext], ext


@pytest.mark.parametrize("name", ["c.jsonl.gz", "c.jsonl.zst", "c.json.zstd", "c.jsonl.xz", "c.ndjson"])
def test_compressed_jsonl_gives_identical_tokens(tmp_path, spm_model, reference, name):
    data = _jsonl_bytes(TEXTS)
    blob = {".gz": gzip.compress, ".zst": lambda b: _zstd(b, frames=3), ".zstd": _zstd, ".xz": lzma.compress,
            ".ndjson": bytes}["." + name.rsplit(".", 1)[1]](data)
    (tmp_path / name).write_bytes(blob)
    preprocess_files([tmp_path / name], spm_model, tmp_path / "out", chunk_lines=5, progress=False)
    _same_as_reference(tmp_path / "out", reference)


def test_parquet_dataset_and_shard_directories(tmp_path, spm_model, reference):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(len(TEXTS))), "content": TEXTS})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=7)
    assert preprocess_files([tmp_path / "one.parquet"], spm_model, tmp_path / "pq", text_key="content",
                            chunk_lines=4, progress=False).documents == len(TEXTS)
    _same_as_reference(tmp_path / "pq", reference)
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"content": TEXTS, "n": list(range(len(TEXTS)))}).save_to_disk(str(saved),
                                                                                            num_shards=3)
    assert len(list(saved.glob("*.arrow"))) == 3
    preprocess_files([saved], spm_model, tmp_path / "hf", text_key="content", chunk_lines=5, progress=False)
    _same_as_reference(tmp_path / "hf", reference)
    # shards of mixed containers in a directory (sorted by name) and as a glob, 2 workers
    shards = tmp_path / "shards"
    shards.mkdir()
    parts = [TEXTS[:20], TEXTS[20:50], TEXTS[50:]]
    (shards / "part-0.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(parts[0])))
    (shards / "part-1.jsonl.zst").write_bytes(_zstd(_jsonl_bytes(parts[1])))
    pq.write_table(pa.table({"text": parts[2]}), shards / "part-2.parquet")
    (shards / ".hidden.jsonl").write_text('{"text": "not read"}\n')
    (shards / "README.md").write_text("not a shard\n")
    for inputs, out in (([shards], "dir"), ([str(shards / "part-*")], "glob")):
        preprocess_files(inputs, spm_model, tmp_path / out, workers=2, chunk_lines=3, progress=False)
        _same_as_reference(tmp_path / out, reference)


def _cli(tmp_path, inputs, spm_model, *extra):
    return run_command("preprocess", ["--input", *map(str, inputs), "--tokenizer", spm_model,
                                      "--save", str(tmp_path / "out" / "ds"), "--no-progress", *extra])


def _nothing_left(tmp_path):
    out = tmp_path / "out"
    return not out.exists() or not list(out.iterdir())


def test_bad_files_are_one_line_naming_the_file(tmp_path, spm_model, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = _jsonl_bytes(TEXTS * 20)
    cases = []
    truncated = tmp_path / "cut.jsonl.zst"
    blob = _zstd(good)
    truncated.write_bytes(blob[: len(blob) // 2])
    cases.append(([truncated], [], rf"error: {truncated}: corrupt or truncated zstd data \(EOFError: the last zstd "
                                   rf"frame is truncated\)"))
    corrupt = tmp_path / "bad.jsonl.gz"
    blob = bytearray(gzip.compress(good))
    blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
    corrupt.write_bytes(bytes(blob))
    cases.append(([corrupt], [], rf"error: {corrupt}: corrupt or truncated gzip data \("))
    cut_xz = tmp_path / "cut.jsonl.xz"
    cut_xz.write_bytes(lzma.compress(good)[:-40])
    cases.append(([cut_xz], [], rf"error: {cut_xz}: corrupt or truncated xz data \(EOFError"))
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["a", "b"], "id": [1, 2]}), nocol)
    cases.append(([nocol], [], rf"error: {nocol}: no column 'text' \(columns: body, id\); choose one with --text-key"))
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    cases.append(([ints], [], rf"error: {ints}: column 'text' holds int64, not strings"))
    cases.append(([str(tmp_path / "none-*.jsonl")], [], rf"error: input {tmp_path}/none-\*\.jsonl matches no file"))
    # the first shard is fine: the bad second one still leaves nothing behind
    ok = tmp_path / "ok.jsonl"
    ok.write_bytes(good)
    cases.append(([ok, truncated], ["--workers", "2"], rf"error: {truncated}: corrupt or truncated zstd data"))
    import re

    for inputs, extra, pattern in cases:
        assert _cli(tmp_path, inputs, spm_model, *extra) == 2, pattern
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.match(pattern, err[0]), (pattern, err)
        assert _nothing_left(tmp_path), pattern


def test_datasetdict_and_null_rows(tmp_path, spm_model, capsys):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c"]}),
                               "test": datasets.Dataset.from_dict({"text": ["d"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    capsys.readouterr()  # datasets' progress bars
    assert _cli(tmp_path, [tmp_path / "dd"], spm_model) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'dd'} is a DatasetDict with splits test, train; "
                                               f"pass one split's directory, e.g. {tmp_path / 'dd' / 'test'}")
    assert _cli(tmp_path, [tmp_path / "dd" / "train"], spm_model) == 0
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["fine", None, "also fine"]}), nulls)
    with pytest.raises(PreprocessError, match=rf"^{nulls}:row 2: 'text' is null$"):
        preprocess_files([nulls], spm_model, tmp_path / "n", progress=False)
    stats = preprocess_files([nulls], spm_model, tmp_path / "n", skip_bad_lines=True, progress=False)
    assert (stats.documents, stats.bad_lines) == (2, 1)
    surrogate = tmp_path / "s.jsonl"  # valid JSON (json.loads takes it), but not text: a bad line, not a traceback
    surrogate.write_text('{"text": "fine"}\n{"text": "half \\ud800 pair"}\n')
    with pytest.raises(PreprocessError, match=rf"^{surrogate}:2: key 'text' holds an unpaired surrogate at character 5$"):
        preprocess_files([surrogate], spm_model, tmp_path / "s", progress=False)


def test_writer_bytes_equal_megatron_core_builder(tmp_path):
    import torch

    rng = np.random.default_rng(0)
    for dtype, hi in ((np.uint16, 65000), (np.int32, 200_000)):
        docs = [rng.integers(0, hi, size=int(n)) for n in rng.integers(1, 50, size=40)]
        ref = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
        for d in docs:
            ref.add_item(torch.from_numpy(d))
            ref.end_document()
        ref.finalize(str(tmp_path / "ref.idx"))
        ours = IndexedWriter(str(tmp_path / "ours.bin"), dtype)
        for i in range(0, 40, 7):  # in batches, as preprocessing writes them
            batch = docs[i:i + 7]
            ours.add_documents(np.concatenate(batch).astype(dtype).tobytes(), np.array([len(d) for d in batch]))
        ours.finalize(str(tmp_path / "ours.idx"))
        for ext in ("bin", "idx"):
            assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"ref.{ext}").read_bytes(), (dtype, ext)
