"""Save and load a live model in any parallel layout (torch.distributed.checkpoint + DTensor).

Each rank's piece of a tensor is wrapped as a DTensor that places it in the canonical global tensor: the
model-parallel cut comes from the model's sharding table (model/sharding.py), and when the tensor is an FSDP2
DTensor (train.sharding zero2 / fsdp) its data-parallel cut comes from its own placement. The mesh lists the
rank axes in the order the cuts are applied (replicas, the model-parallel splits outermost first, then the FSDP
shard), over the ranks of this rank's pipeline stage in megatron-core order (all ranks without pipeline
parallelism); meshes are placement only (no process groups: DCP talks over the default group). Under pipeline
parallelism ranks hold different tensors: every rank takes part in the save and load of every part (the union
over ranks, possibly with nothing of its own), so the collective calls match. DCP writes each global chunk once
(replicas are deduplicated) and, on load, reads only the chunks that overlap this rank's piece, so a checkpoint
saved at one TP/EP/DP/sharding layout loads into any other.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CheckpointError
from ..model.sharding import ParamSharding, sharding_table
from .format import INDEX, MODEL_DIR, read_index, resolve
from .store import dcp_load, dcp_save, part_metadata, part_of

_MESHES: dict = {}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _mesh(ranks: torch.Tensor, device_type: str):
    """A DeviceMesh over `ranks` without process groups (DCP only needs the placement; a stage's ranks create
    meshes the other stages do not, so creating groups would not be collective)."""
    from torch.distributed.device_mesh import DeviceMesh

    key = (tuple(ranks.shape), tuple(ranks.flatten().tolist()), device_type, id(dist.group.WORLD))
    if key not in _MESHES:
        _MESHES[key] = DeviceMesh(device_type, ranks.contiguous(), _init_backend=False)
    return _MESHES[key]


def fsdp_cut(t: torch.Tensor) -> Optional[tuple[int, int]]:
    """(dim, group size) of an FSDP2 DTensor's data-parallel shard; None for a plain tensor."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(t, DTensor):
        return None
    (place,) = t.placements
    if not isinstance(place, Shard):
        raise CheckpointError(f"unexpected FSDP placement {place} (expected one Shard)")
    return place.dim, t.device_mesh.size()


def local_of(t: torch.Tensor) -> torch.Tensor:
    """This rank's data of a plain tensor or a DTensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def as_global(t: torch.Tensor, spec: ParamSharding):
    """A DTensor placing this rank's piece of `t` (a model-parallel shard, or an FSDP2 DTensor of one) in the
    canonical global tensor; the plain local tensor when nothing is cut or single-process."""
    cut = fsdp_cut(t)
    local = local_of(t).contiguous()
    if not _distributed() or (not spec.splits and (cut is None or cut[1] == 1)):
        return local
    from torch.distributed.tensor import DTensor, Replicate, Shard

    from ..parallel import pipeline_stage_ranks

    sizes = [s.size for s in spec.splits]
    split_ranks = math.prod(sizes)
    ranks = torch.tensor(pipeline_stage_ranks())
    world = ranks.numel()
    placements = [Replicate()] + [Shard(s.dim) for s in spec.splits]
    if cut is None or cut[1] == 1:
        ranks = ranks.view(world // split_ranks, *sizes)
    else:  # the FSDP group is the outermost rank axis (dp / edp); replicas in between; shard applied last
        fsdp = cut[1]
        ranks = ranks.view(fsdp, world // (split_ranks * fsdp), *sizes)
        ranks = ranks.permute(*range(1, ranks.dim()), 0)
        placements.append(Shard(cut[0]))
    shape = spec.global_shape(t.shape)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, _mesh(ranks, local.device.type), placements, run_check=False,
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


def _all_parts(parts: dict[str, list[str]]) -> dict[str, list[str]]:
    """The union over ranks of {part: names} (ranks of different pipeline stages hold different parts), in an
    order every rank agrees on. Without pipeline stages every rank holds the same parts: no gather."""
    from ..parallel import all_gather_object, pipeline_stage_ranks, world_group

    if not _distributed() or len(pipeline_stage_ranks()) == dist.get_world_size():
        return parts

    merged: dict[str, set] = {}
    for theirs in all_gather_object(parts, world_group()):
        for part, names in theirs.items():
            merged.setdefault(part, set()).update(names)
    return {p: sorted(merged[p]) for p in sorted(merged)}


@torch.no_grad()
def save_model(model: nn.Module, ckpt_dir: str | Path, dtype: Optional[torch.dtype] = None) -> dict:
    """Collective over all ranks: write model/<part>/ for every part plus model/index.json (rank 0).
    Returns the index. `ckpt_dir` is normally a temporary directory the caller renames when complete."""
    ckpt_dir = Path(ckpt_dir)
    tensors = model_tensors(model)
    table = sharding_table(model)
    parts = _all_parts(_by_part(tensors))
    for part, names in parts.items():
        sd = {}
        for n in names:
            if n not in tensors:
                continue  # another pipeline stage's tensor: this rank joins the collective with nothing
            t = tensors[n].detach()
            t = t if dtype is None else t.to(dtype)
            sd[n] = as_global(t.contiguous(), table[n])
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
    table = sharding_table(model)
    missing = [n for n in tensors if n not in stored]
    if missing and strict:
        raise CheckpointError(f"{ckpt}: checkpoint lacks {missing[0]!r} ({len(missing)} tensors missing); "
                              f"was it saved from a different model config?")
    mine: dict[str, list[str]] = {}
    for n in tensors:
        if n in stored:
            mine.setdefault(stored[n], []).append(n)
    for part in (_all_parts(mine) if collective else mine):
        names = mine.get(part, [])
        pdir = ckpt / MODEL_DIR / part
        md = part_metadata(pdir) if names else {}
        targets = {}
        for n in names:
            if n not in md:
                raise CheckpointError(f"{pdir}: part lacks {n!r}, which model/{INDEX} lists")
            want = table[n].global_shape(tensors[n].shape)
            if md[n][0] != tuple(want):
                raise CheckpointError(f"{pdir}: {n} has shape {md[n][0]} but the model expects {tuple(want)}")
            buf = torch.empty_like(tensors[n].detach(), dtype=md[n][1])  # a DTensor like an FSDP2 parameter
            targets[n] = as_global(buf, table[n]) if collective else local_of(buf)
        dcp_load(targets, pdir, no_dist=not collective)
        for n in names:
            local_of(tensors[n]).copy_(local_of(targets[n]).to(tensors[n].dtype))
