"""Nothing we open executes code: a payload planted in every kind of file we read never runs, and the tool that
reads it fails with one `error:` line and exit code 2.

The payload is a pickle whose unpickling would create a marker file (`os.system("touch MARKER")`). It is planted
in: a DCP part's .metadata (whole file, and nested inside real metadata), a DCP data file (.distcp), a DCP entry
declared as bytes (which DCP itself would unpickle with weights_only=False), the optimizer part's .metadata,
HF pytorch_model.bin, Meta consolidated.00.pth, a LLaMA-MoE .bin; plus malformed JSON files (trainer_state.json,
model/index.json, model.safetensors.index.json) that must be refused, not followed.
"""
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from _cli import run_cli
from _moe_helpers import make_moe
from _train_helpers import tiny_config, write_corpus

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cli(*args, timeout=180):
    return run_cli(*args, timeout=timeout)


def _assert_refused(result, marker, what=""):
    assert not Path(marker).exists(), f"payload ran ({what})"
    assert result.returncode == 2, (what, result.returncode, result.stderr[-2000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, (what, result.stderr[-2000:])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A MoE checkpoint, a run directory with an optimizer checkpoint, and a dataset."""
    from megatron_moe.parallel import ParallelState
    from megatron_moe.training import run_training

    root = tmp_path_factory.mktemp("untrusted")
    make_moe(root / "moe")
    prefixes = write_corpus(root / "data")
    cfg = tiny_config(prefixes, root / "run", moe=True, train_steps=1)
    cfg.checkpoint.load = str(root / "moe")
    run_training(cfg, ParallelState())
    return root, prefixes


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _plant_metadata(part_dir: Path, marker, nested: bool):
    md = part_dir / ".metadata"
    if nested:  # real metadata with the payload hidden in a field DCP never looks at
        from megatron_moe.checkpoint.safe_dcp import read_metadata_file

        real = read_metadata_file(md)
        real.planner_data = {"x": (Payload(marker),)}
        md.write_bytes(pickle.dumps(real))
    else:
        md.write_bytes(pickle.dumps(Payload(marker)))


@pytest.mark.parametrize("nested", [False, True], ids=["whole", "nested"])
def test_dcp_metadata_payload_every_reader(base, tmp_path, nested):
    from megatron_moe import load_model
    from megatron_moe.errors import CheckpointError

    root, prefixes = base
    marker = tmp_path / "PWNED"
    ck = _copy(root / "moe", tmp_path / "ck")
    _plant_metadata(ck / "model" / "layer_000", marker, nested)
    with pytest.raises(CheckpointError, match=r"layer_000/\.metadata: .*refusing to read it"):
        load_model(ck)
    assert not marker.exists()
    alpha = prefixes["alpha"]
    for what, args in [
        ("inspect", ["tools/inspect_checkpoint.py", ck]),
        ("export", ["tools/export_hf.py", "--load", ck, "--save", tmp_path / "hf", "--format", "mixtral"]),
        ("evaluate", ["tools/evaluate.py", "--load", ck, "--data", alpha, "--seq-len", "8"]),
        ("train", ["-m", "megatron_moe.train", f"checkpoint.load={ck}", f"logging.run_dir={tmp_path / 'r'}",
                   f"data.domains=[{{name: a, prefixes: [{alpha}]}}]", "data.seq_len=16", "train.train_steps=1",
                   "train.global_batch_size=2", "train.micro_batch_size=2"]),
    ]:
        if nested and what in ("export", "evaluate"):
            continue  # the same reader as inspect and train; keep the suite short
        r = _cli(*args)
        _assert_refused(r, marker, what)
        assert "refusing to read it" in r.stderr, (what, r.stderr)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "r").exists()  # nothing left behind


def test_dcp_bytes_entry_is_refused(base, tmp_path):
    """DCP unpickles entries declared as bytes with weights_only=False: such metadata must be refused."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    from megatron_moe import load_model
    from megatron_moe.checkpoint.safe_dcp import read_metadata_file
    from megatron_moe.errors import CheckpointError

    root, _ = base
    marker = tmp_path / "PWNED"
    ck = _copy(root / "moe", tmp_path / "ck")
    part = ck / "model" / "final"
    md = read_metadata_file(part / ".metadata")
    evil = io.BytesIO()
    torch.save(Payload(marker), evil)
    blob = evil.getvalue()
    data_file = next(f.name for f in part.iterdir() if f.suffix == ".distcp")
    offset = (part / data_file).stat().st_size
    with open(part / data_file, "ab") as f:
        f.write(blob)
    name = "norm.weight"
    md.state_dict_metadata[name] = BytesStorageMetadata()
    info = next(v for k, v in md.storage_data.items() if k.fqn == name)
    md.storage_data = {k: v for k, v in md.storage_data.items() if k.fqn != name}
    md.storage_data[MetadataIndex(name)] = type(info)(relative_path=data_file, offset=offset, length=len(blob))
    (part / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointError, match="is not a tensor"):
        load_model(ck)
    assert not marker.exists()


def test_dcp_data_file_payload(base, tmp_path):
    root, _ = base
    marker = tmp_path / "PWNED"
    ck = _copy(root / "moe", tmp_path / "ck")
    part = ck / "model" / "embed"
    for f in part.glob("*.distcp"):
        buf = io.BytesIO()
        torch.save({"x": Payload(marker)}, buf)
        f.write_bytes(buf.getvalue() * 4)
    r = _cli("tools/export_hf.py", "--load", ck, "--save", tmp_path / "hf", "--format", "mixtral")
    _assert_refused(r, marker, "distcp")
    assert "unreadable checkpoint part" in r.stderr and "embed" in r.stderr
    assert not (tmp_path / "hf").exists()


def test_optimizer_metadata_payload_on_resume(base, tmp_path):
    root, prefixes = base
    marker = tmp_path / "PWNED"
    run = _copy(root / "run", tmp_path / "run")
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    _plant_metadata(latest / "optimizer", marker, nested=False)
    cfg = yaml_config(prefixes, run, tmp_path)
    r = _cli("-m", "megatron_moe.train", "--config", cfg, "train.train_steps=2")
    _assert_refused(r, marker, "optimizer")
    assert "optimizer/.metadata" in r.stderr


def yaml_config(prefixes, run, tmp_path):
    import yaml

    cfg = tiny_config(prefixes, run, moe=True, train_steps=1)
    path = tmp_path / "cfg.yaml"
    d = cfg.to_dict()
    d.pop("model"), d.pop("moe")  # the run's checkpoint supplies them
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize("state", ['{"step": "x"', '[1, 2]', '{"step": 1, "consumed_tokens": 0, "data": {"version": 1},'
                                   ' "rng": [{"python": [3, [1], null]}], "world_size": 1}'],
                         ids=["truncated", "not-an-object", "bad-fields"])
def test_bad_trainer_state(base, tmp_path, state):
    root, prefixes = base
    run = _copy(root / "run", tmp_path / "run")
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    (latest / "trainer_state.json").write_text(state)
    r = _cli("-m", "megatron_moe.train", "--config", yaml_config(prefixes, run, tmp_path), "train.train_steps=2")
    _assert_refused(r, tmp_path / "none", "trainer_state")
    assert "trainer_state.json" in r.stderr


def test_index_json_path_tricks(base, tmp_path):
    from megatron_moe import load_model
    from megatron_moe.errors import CheckpointError

    root, _ = base
    ck = _copy(root / "moe", tmp_path / "ck")
    index = json.loads((ck / "model" / "index.json").read_text())
    index["parts"]["../../etc"] = index["parts"].pop("final")
    (ck / "model" / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="is not a directory inside model/"):
        load_model(ck)
    (ck / "model" / "index.json").write_text('{"parts": 7}')
    with pytest.raises(CheckpointError, match="not a checkpoint index"):
        load_model(ck)


def _hf_dir(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=32, max_position_embeddings=16)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_hf_bin_and_index_payloads(tmp_path):
    marker = tmp_path / "PWNED"
    hf = _hf_dir(tmp_path)
    (hf / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Payload(marker)}, hf / "pytorch_model.bin")
    for tool in (["tools/import_llama.py"], ["tools/convert_llama_to_moe.py", "--num-experts", "2", "--top-k", "1"]):
        r = _cli(*tool, "--load", hf, "--save", tmp_path / "out")
        _assert_refused(r, marker, tool[0])
        assert "pytorch_model.bin" in r.stderr and not (tmp_path / "out").exists()
    (hf / "pytorch_model.bin").unlink()
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "../../../etc/passwd"}}))
    r = _cli("tools/import_llama.py", "--load", hf, "--save", tmp_path / "out")
    _assert_refused(r, marker, "index")
    assert "is not a file in" in r.stderr


def test_meta_pth_payload(tmp_path):
    marker = tmp_path / "PWNED"
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({"dim": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 32}))
    torch.save({"tok_embeddings.weight": Payload(marker)}, meta / "consolidated.00.pth")
    r = _cli("tools/import_llama.py", "--load", meta, "--save", tmp_path / "out")
    _assert_refused(r, marker, "meta")
    assert "consolidated.00.pth" in r.stderr


def test_llama_moe_bin_payload(tmp_path):
    marker = tmp_path / "PWNED"
    d = tmp_path / "lm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama_moe", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "vocab_size": 32, "num_experts": 2, "num_selects": 1,
        "size_experts": [[16, 16]], "max_position_embeddings": 16}))
    torch.save({"model.embed_tokens.weight": Payload(marker)}, d / "pytorch_model.bin")
    r = _cli("tools/import_llama_moe.py", "--load", d, "--save", tmp_path / "out")
    _assert_refused(r, marker, "llama-moe")
