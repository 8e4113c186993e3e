"""The tensors of an HF model directory by format name: model.safetensors, a sharded safetensors index,
pytorch_model.bin, or a sharded pytorch_model-*.bin index. One tensor at a time; .bin files through
torch.load(weights_only=True, mmap=True); index shard names must be plain files in the directory.
Every problem is a CheckpointError naming the file."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError

SAFE_NAME, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_NAME, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def plain_file_name(name) -> bool:
    """An index entry that names a file inside the checkpoint directory (no paths, no '..')."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


# what torch.load raises on a file that is not a weights-only state dict: RuntimeError (not a zip, a truncated
# zip, a legacy non-zip pickle refused by mmap), UnpicklingError (a global outside the weights-only allow-list),
# EOFError / ValueError / KeyError (a zip whose pickle is cut short or names records it lacks)
_TORCH_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError)


def load_state_dict_file(f: Path) -> dict:
    """A .bin / .pth state dict with torch.load(weights_only=True, mmap=True): tensors and plain containers only."""
    try:
        sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except _TORCH_LOAD_ERRORS as err:
        raise CheckpointError(f"{f}: cannot read ({str(err).splitlines()[0]})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{f}: not a state dict")
    return sd


def read_json(path: Path) -> dict:
    """A JSON object of an HF checkpoint (config.json, an index) through the one structured reader."""
    from ..structured import read_json as _read

    return _read(path, expect=dict, error=CheckpointError)


class HFTensors:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such HF model directory")
        self._open: dict[Path, object] = {}
        self._bin: Optional[tuple[Path, dict]] = None
        self.files = self._locate()

    def _locate(self) -> dict[str, Path]:
        """format name -> file holding it."""
        for idx_name in (SAFE_INDEX, BIN_INDEX):
            idx = self.path / idx_name
            if idx.is_file():
                weight_map = read_json(idx).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointError(f"{idx}: not a valid index (needs a non-empty 'weight_map')")
                bad = [v for v in weight_map.values() if not plain_file_name(v)]
                if bad:
                    raise CheckpointError(f"{idx}: shard name {bad[0]!r} is not a file in {self.path}")
                out = {str(k): self.path / v for k, v in weight_map.items()}
                for f in sorted(set(out.values())):
                    if not f.is_file():
                        raise CheckpointError(f"{idx}: shard {f.name} is missing")
                return out
        for single in (SAFE_NAME, BIN_NAME):
            f = self.path / single
            if f.is_file():
                names = self._safe(f).keys() if f.suffix == ".safetensors" else self._load_bin(f).keys()
                return {k: f for k in names}
        raise CheckpointError(f"{self.path}: no {SAFE_NAME}, {SAFE_INDEX}, {BIN_NAME} or {BIN_INDEX}")

    def _safe(self, f: Path):
        from safetensors import SafetensorError, safe_open

        if f not in self._open:
            try:
                self._open[f] = safe_open(str(f), framework="pt")
            except SafetensorError as err:  # a bad header: truncated, too large, not JSON
                raise CheckpointError(f"{f}: truncated or corrupt safetensors file ({str(err).splitlines()[0]})") from None
        return self._open[f]

    def _load_bin(self, f: Path) -> dict:
        if self._bin is None or self._bin[0] != f:
            self._bin = None  # release the previous shard first
            self._bin = (f, load_state_dict_file(f))
        return self._bin[1]

    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise CheckpointError(f"{self.path}: missing tensor {name!r}")
        f = self.files[name]
        from safetensors import SafetensorError

        try:
            t = self._safe(f).get_tensor(name) if f.suffix == ".safetensors" else self._load_bin(f)[name]
        except (SafetensorError, KeyError) as err:  # data past the file's end; a name the index put elsewhere
            raise CheckpointError(f"{f}: cannot read {name!r} ({str(err).splitlines()[0]})") from None
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{f}: {name!r} is not a tensor")
        return t

    def release(self) -> None:
        """Close open shards: their memory-mapped pages otherwise stay resident as layers are read."""
        self._open.clear()
        self._bin = None
