"""Reading torch.distributed.checkpoint (DCP) directories without executing code from them.

DCP's own `FileSystemReader.read_metadata` opens `.metadata` with plain `pickle.load`, so a crafted checkpoint
runs arbitrary code the moment any tool reads it. `SafeFileSystemReader` replaces that one step:

  1. `.metadata` is unpickled by `_MetadataUnpickler`, whose `find_class` admits only the classes DCP's metadata
     is made of (Metadata, TensorStorageMetadata, ChunkStorageMetadata, TensorProperties, MetadataIndex,
     StorageMeta, _StorageInfo, torch.Size, torch dtypes/layouts, pathlib paths) and nothing callable beyond
     their constructors. Any other global (os.system, builtins.eval, ...) is refused before it is looked up.
  2. The result is checked structurally (`check_metadata`): every entry is a tensor (DCP unpickles `bytes`
     entries with `torch.load(weights_only=False)`, so they are refused), shapes are non-negative ints, and every
     storage item names a plain file inside the directory (no `..`, no absolute paths) at a non-negative offset.

Tensor payloads (`*.distcp`) are read by DCP itself with `torch.load(weights_only=True)`, which refuses code.
Errors are `CheckpointError` with one line naming the file.
"""
from __future__ import annotations

import pathlib
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_md
from torch.distributed.checkpoint.filesystem import _StorageInfo

from ..errors import CheckpointError

_DCP_MD = "torch.distributed.checkpoint.metadata"
_ALLOWED: dict[str, frozenset] = {
    _DCP_MD: frozenset({"Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"}),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),  # maps a layout's name ("torch.strided") to the layout
    "pathlib": frozenset({"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}


def _torch_global(name: str):
    """torch.Size and torch dtypes / layouts / memory formats (plain values, not callables that run code)."""
    if name == "Size":
        return torch.Size
    value = getattr(torch, name, None)
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
        return value
    return None


# Enum classes of DCP metadata. Some Python 3.11 releases, among them 3.11.2 (Debian 12's python3.11), pickle an
# Enum member as `getattr(EnumClass, "NAME")`; 3.10.13, 3.11.7, 3.12.1 and 3.13.0 as `EnumClass(value)`.
_ENUMS = (dcp_md._MEM_FORMAT_ENCODING,)


def _enum_member(cls: Any, name: Any):
    """What `builtins.getattr` resolves to in checkpoint metadata: a member of an allow-listed Enum, nothing else
    (a free getattr reaches any attribute of the allowed classes, e.g. pathlib.Path.write_text)."""
    if cls in _ENUMS and isinstance(name, str) and name in cls.__members__:
        return cls[name]
    raise pickle.UnpicklingError(f"refused getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r}) "
                                 "(only members of checkpoint enums)")


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name == "getattr":
            return _enum_member
        if module == "torch":
            value = _torch_global(name)
            if value is not None:
                return value
        elif name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (not part of checkpoint metadata)")


def _fail(path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {why}; refusing to read it (docs/checkpoint_format.md: what is safe to open)")


def _check_size(value: Any, what: str, path) -> None:
    if not isinstance(value, torch.Size) or any(not isinstance(v, int) or v < 0 for v in value):
        raise _fail(path, f"{what} is not a shape of non-negative integers")


def check_metadata(md: Any, path) -> dcp_md.Metadata:
    """Structural check of unpickled DCP metadata (see the module docstring); returns it."""
    if not isinstance(md, dcp_md.Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise _fail(path, "not DCP checkpoint metadata")
    for key, entry in md.state_dict_metadata.items():
        if not isinstance(key, str):
            raise _fail(path, f"entry name {key!r} is not a string")
        if not isinstance(entry, dcp_md.TensorStorageMetadata):
            raise _fail(path, f"entry {key!r} is not a tensor ({type(entry).__name__}, which DCP would unpickle)")
        if not isinstance(entry.properties, dcp_md.TensorProperties) or not isinstance(entry.properties.dtype,
                                                                                      torch.dtype):
            raise _fail(path, f"entry {key!r} has no tensor dtype")
        _check_size(entry.size, f"entry {key!r} size", path)
        for chunk in entry.chunks:
            if not isinstance(chunk, dcp_md.ChunkStorageMetadata):
                raise _fail(path, f"entry {key!r} has a malformed chunk")
            _check_size(chunk.offsets, f"entry {key!r} chunk offsets", path)
            _check_size(chunk.sizes, f"entry {key!r} chunk sizes", path)
    storage = md.storage_data
    if not isinstance(storage, dict):
        raise _fail(path, "storage table is missing")
    for index, info in storage.items():
        if not isinstance(index, dcp_md.MetadataIndex) or not isinstance(info, _StorageInfo):
            raise _fail(path, "storage table has a malformed entry")
        rel = info.relative_path
        if (not isinstance(rel, str) or not rel or "/" in rel or "\\" in rel or rel in (".", "..")
                or rel.startswith(".")):
            raise _fail(path, f"storage item names {rel!r}, not a data file inside the checkpoint directory")
        if not (isinstance(info.offset, int) and isinstance(info.length, int) and info.offset >= 0
                and info.length >= 0):
            raise _fail(path, f"storage item in {rel!r} has a negative or non-integer offset/length")
        if getattr(info, "transform_descriptors", None):
            raise _fail(path, f"storage item in {rel!r} asks for stream transforms {info.transform_descriptors}")
    planner = md.planner_data
    if planner is not None and not (isinstance(planner, dict) and all(
            isinstance(k, str) and isinstance(v, (tuple, list)) and all(isinstance(p, (str, int)) for p in v)
            for k, v in planner.items())):
        raise _fail(path, "planner data is not a table of key paths")
    return md


def read_metadata_file(path: str | pathlib.Path) -> dcp_md.Metadata:
    """Unpickle a DCP `.metadata` file with the allow-listed unpickler, then check its structure."""
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (the checkpoint part is incomplete)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError, IndexError,
            KeyError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _fail(path, f"not valid checkpoint metadata ({msg[:160]})") from None
    return check_metadata(md, path)


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with `read_metadata` replaced by the allow-listed, checked version."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_md.Metadata:
        md = read_metadata_file(self._get_metadata_path(kwargs.get("rank")))
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = dcp_md.StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md
