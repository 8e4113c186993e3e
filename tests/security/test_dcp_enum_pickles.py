"""Checkpoints written by Python 3.11.2 load, and the `getattr` their metadata needs opens nothing else.

Python 3.11.2 (Debian 12's python3.11; found by `make docker-test`, whose fallback base image has it) pickles an
Enum member as `getattr(EnumClass, "NAME")`, where 3.11.7 and 3.12 pickle `EnumClass(value)`. DCP metadata holds
one Enum (`_MEM_FORMAT_ENCODING`), so every checkpoint saved by 3.11.2 carries `builtins.getattr`. The pickler
below writes exactly that form (what 3.11.2's `Enum.__reduce_ex__` returns) from this test's Python.
"""
import enum
import io
import pathlib
import pickle

import pytest
import torch
from torch.distributed.checkpoint import metadata as dcp_md

from _moe_helpers import make_moe


class _Py3112Pickler(pickle.Pickler):
    """Pickles Enum members as Python 3.11.2 does: getattr(EnumClass, name)."""

    def reducer_override(self, obj):
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        return NotImplemented


def _dumps_3112(obj) -> bytes:
    buf = io.BytesIO()
    _Py3112Pickler(buf, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
    return buf.getvalue()


def _classes_looked_up(data: bytes) -> set[str]:
    """module.name of every global a plain unpickler looks up (only for pickles this test made itself)."""
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return seen


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("enum") / "moe"
    make_moe(path)
    return path


def test_metadata_pickled_by_python_3_11_2_loads(ckpt, tmp_path):
    import shutil

    from megatron_moe import load_model
    from megatron_moe.checkpoint.safe_dcp import read_metadata_file

    want = {k: v.clone() for k, v in load_model(ckpt).state_dict().items()}
    ck = pathlib.Path(shutil.copytree(ckpt, tmp_path / "ck"))
    parts = sorted(ck.rglob(".metadata"))
    assert parts
    for md_path in parts:
        md = read_metadata_file(md_path)
        data = _dumps_3112(md)
        assert "builtins.getattr" in _classes_looked_up(data)  # the form Python 3.11.2 writes
        md_path.write_bytes(data)
        again = read_metadata_file(md_path)
        encodings = {e.properties.memory_format for e in again.state_dict_metadata.values()}
        assert encodings <= {torch.contiguous_format, torch.channels_last, torch.preserve_format}
    got = load_model(ck).state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


class GetAttr:
    """Unpickles as getattr(target, name)."""

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __call__(self, *args):  # pickle wants the first item of a reduce tuple to be callable
        raise AssertionError("never called while pickling")

    def __reduce__(self):
        return getattr, (self.target, self.name)


class CallIt:
    """Unpickles as fn(*args)."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload", ["path-write", "enum-dunder", "enum-method"])
def test_getattr_reaches_only_enum_members(ckpt, tmp_path, payload):
    """getattr(Path, "write_text")(Path(marker), "x") creates the marker under plain pickle; our reader must refuse
    it, and any getattr of an allowed Enum that is not a member, before anything is called."""
    from megatron_moe.checkpoint.safe_dcp import read_metadata_file
    from megatron_moe.errors import CheckpointError

    marker = tmp_path / "PWNED"
    evil = {
        "path-write": CallIt(GetAttr(pathlib.Path, "write_text"), (pathlib.Path(marker), "x")),
        "enum-dunder": GetAttr(dcp_md._MEM_FORMAT_ENCODING, "__class__"),
        "enum-method": GetAttr(dcp_md._MEM_FORMAT_ENCODING, "mro"),
    }[payload]
    md = read_metadata_file(next(ckpt.rglob(".metadata")))
    md.planner_data = {"x": (evil,)}
    data = pickle.dumps(md)
    live = pickle.loads(data).planner_data["x"][0]  # each payload is live under plain pickle
    if payload == "path-write":
        assert marker.read_text() == "x"
        marker.unlink()
    elif payload == "enum-dunder":
        assert live is type(dcp_md._MEM_FORMAT_ENCODING)
    else:
        assert live == dcp_md._MEM_FORMAT_ENCODING.mro
    path = tmp_path / ".metadata"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"refused getattr\(.*refusing to read it"):
        read_metadata_file(path)
    assert not marker.exists()
