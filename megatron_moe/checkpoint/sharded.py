"""Save and load a live model in any parallel layout (torch.distributed.checkpoint + DTensor).

Each local parameter is wrapped as a DTensor on a device mesh built from its `splits` (model/sharding.py):
mesh shape (replicas, *split sizes) over ranks in megatron-core order, placements (Replicate, Shard(dim)...).
DCP writes each global chunk once (replicas are deduplicated) and, on load, reads only the chunks that overlap
this rank's slice, so a checkpoint saved at one TP/EP/DP layout loads into any other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CheckpointError
from ..model.sharding import global_shape, splits_of
from .format import INDEX, MODEL_DIR, read_index, resolve
from .store import dcp_load, dcp_save, part_metadata, part_of

_MESHES: dict = {}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _mesh(shape: tuple, device_type: str):
    from torch.distributed.device_mesh import DeviceMesh

    key = (shape, device_type, id(dist.group.WORLD))
    if key not in _MESHES:
        _MESHES[key] = DeviceMesh(device_type, torch.arange(dist.get_world_size()).view(*shape))
    return _MESHES[key]


def as_global(local: torch.Tensor, splits: tuple, like: Optional[torch.Tensor] = None):
    """Wrap a local shard as a DTensor describing its place in the global tensor (plain tensor if unsplit
    or single-process). Splits must be listed outermost rank dimension first (e.g. ep before etp)."""
    if not splits or not _distributed():
        return local
    from torch.distributed.tensor import DTensor, Replicate, Shard

    sizes = [s.size for s in splits]
    prod = 1
    for s in sizes:
        prod *= s
    world = dist.get_world_size()
    mesh = _mesh((world // prod, *sizes), local.device.type)
    shape = list(local.shape)
    for s in splits:
        shape[s.dim] *= s.size
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, mesh, [Replicate()] + [Shard(s.dim) for s in splits], run_check=False,
                              shape=torch.Size(shape), stride=stride)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical name -> local parameter/persistent buffer (with its sharding metadata)."""
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, torch.Tensor) and not name.endswith("_extra_state"):
            out[name] = t
    return out


def _by_part(names) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {}
    for n in names:
        parts.setdefault(part_of(n), []).append(n)
    return parts


@torch.no_grad()
def save_model(model: nn.Module, ckpt_dir: str | Path, dtype: Optional[torch.dtype] = None) -> dict:
    """Collective over all ranks: write model/<part>/ for every part plus model/index.json (rank 0).
    Returns the index. `ckpt_dir` is normally a temporary directory the caller renames when complete."""
    ckpt_dir = Path(ckpt_dir)
    tensors = model_tensors(model)
    parts = _by_part(tensors)
    for part, names in parts.items():
        sd = {}
        for n in names:
            t = tensors[n].detach()
            t = t if dtype is None else t.to(dtype)
            sd[n] = as_global(t.contiguous(), splits_of(tensors[n]))
        dcp_save(sd, ckpt_dir / MODEL_DIR / part, no_dist=not _distributed())
    index = {"parts": {p: sorted(ns) for p, ns in parts.items()},
             "dtype": str(dtype or next(iter(tensors.values())).dtype).replace("torch.", "")}
    if not _distributed() or dist.get_rank() == 0:
        import json

        (ckpt_dir / MODEL_DIR / INDEX).write_text(json.dumps(index, indent=1))
    return index


@torch.no_grad()
def load_into(model: nn.Module, path: str | Path, strict: bool = True, collective: Optional[bool] = None) -> None:
    """Fill every local parameter/buffer of `model` with its slice of the checkpoint (any saved layout).
    `collective` (default: torch.distributed is up with >1 rank) must be False when one rank alone loads a
    single-process model inside a distributed job."""
    collective = _distributed() if collective is None else collective
    ckpt = resolve(path)
    index = read_index(ckpt)
    stored = {n: p for p, ns in index["parts"].items() for n in ns}
    tensors = model_tensors(model)
    missing = [n for n in tensors if n not in stored]
    if missing and strict:
        raise CheckpointError(f"{ckpt}: checkpoint lacks {missing[0]!r} ({len(missing)} tensors missing); "
                              f"was it saved from a different model config?")
    for part, names in _by_part([n for n in tensors if n in stored]).items():
        pdir = ckpt / MODEL_DIR / stored[names[0]]
        md = part_metadata(pdir)
        targets = {}
        for n in names:
            if n not in md:
                raise CheckpointError(f"{pdir}: part lacks {n!r}, which model/{INDEX} lists")
            want = global_shape(tensors[n])
            if md[n][0] != tuple(want):
                raise CheckpointError(f"{pdir}: {n} has shape {md[n][0]} but the model expects {tuple(want)}")
            buf = torch.empty_like(tensors[n], dtype=md[n][1])
            targets[n] = as_global(buf, splits_of(tensors[n])) if collective else buf
        dcp_load(targets, pdir, no_dist=not collective)
        for n in names:
            t = targets[n]
            local = t.to_local() if hasattr(t, "to_local") else t
            tensors[n].copy_(local.to(tensors[n].dtype))
