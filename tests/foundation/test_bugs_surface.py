"""A programming error inside a reader is a bug and keeps its traceback: the readers map only the errors that the
libraries raise for bad files (torch.load's, safetensors') to a one-line CheckpointError (issue #22)."""
import pytest
import torch
from safetensors.torch import save_file

from megatron_moe.errors import CheckpointError
from megatron_moe.formats import hf_files


def _safetensors_dir(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_a_bug_in_the_safetensors_reader_is_not_relabelled(tmp_path, monkeypatch):
    import safetensors

    def buggy(*a, **k):
        raise TypeError("a bug, not a bad file")

    monkeypatch.setattr(safetensors, "safe_open", buggy)
    with pytest.raises(TypeError, match="a bug"):
        hf_files.HFTensors(_safetensors_dir(tmp_path))


def test_a_bug_in_torch_load_is_not_relabelled(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")

    def buggy(*a, **k):
        raise AttributeError("a bug, not a bad file")

    monkeypatch.setattr(hf_files.torch, "load", buggy)
    with pytest.raises(AttributeError, match="a bug"):
        hf_files.HFTensors(tmp_path)


def test_bad_files_are_one_line_checkpoint_errors(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        hf_files.HFTensors(tmp_path)
    other = tmp_path / "st"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        hf_files.HFTensors(other)
