"""Every read of one of our checkpoints checks it against its own config.json before using it.

    model_cfg, moe_cfg, raw = verify_checkpoint(ckpt)     # CheckpointError with one line, or the configs

Checks, cheapest first, so a config.json that implies an absurd model is refused before anything is built:
  1. the number of layers config.json implies equals the number model/index.json holds tensors for (a
     `num_layers: 10000000` costs a set of integers, not ten million modules);
  2. the tensor names the model implies (built on the meta device: nothing allocated) equal the index's names,
     both ways: a missing tensor and a tensor the config has no place for are both refused;
  3. every part's DCP metadata (read by the allow-listed unpickler) holds those names with the implied global
     shapes.
Used by preflight (train), export, evaluate / load_model, inspect and reshard.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..config import ModelConfig, MoEConfig
from ..errors import CheckpointError

_LAYER = re.compile(r"^layers\.(\d+)\.")


def layer_indices(names: Iterable[str], pattern: re.Pattern = _LAYER) -> set[int]:
    return {int(m.group(1)) for n in names if (m := pattern.match(n))}


def check_layer_count(num_layers: int, names: Iterable[str], where: str, field: str = "num_layers",
                      pattern: re.Pattern = _LAYER) -> None:
    """The layers a config implies are exactly the layers the files hold tensors for (0 .. num_layers-1)."""
    held = layer_indices(names, pattern)
    if len(held) != num_layers or held != set(range(num_layers)):
        extra = sorted(i for i in held if i >= num_layers)[:1]
        detail = f" (the files have layer {extra[0]})" if extra else ""
        raise CheckpointError(f"{where}: the config says {field}={num_layers} but the files hold tensors for "
                              f"{len(held)} layers{detail}")


def implied_shapes(model: ModelConfig, moe: MoEConfig) -> dict[str, tuple]:
    """Canonical name -> global shape of the model a config describes (built on the meta device)."""
    import torch

    from ..config import Config
    from ..model import build_model
    from .sharded import model_tensors

    with torch.device("meta"):
        built = build_model(Config(model=model, moe=moe), recompute=False)
    return {n: tuple(t.shape) for n, t in model_tensors(built).items()}


def verify_checkpoint(path: str | Path) -> tuple[ModelConfig, MoEConfig, dict]:
    """config.json, model/index.json and every part's metadata agree (see the module docstring)."""
    from .format import read_config, read_index, resolve
    from .store import part_metadata

    ckpt = resolve(path)
    model_cfg, moe_cfg, raw = read_config(ckpt)
    try:
        model_cfg.validate()
        moe_cfg.validate(model_cfg)
    except ValueError as err:
        raise CheckpointError(f"{ckpt}/config.json: {err}") from None
    index = read_index(ckpt)
    where = {n: p for p, names in index["parts"].items() for n in names}
    check_layer_count(model_cfg.num_layers, where, f"{ckpt}/config.json", "model.num_layers")
    want = implied_shapes(model_cfg, moe_cfg)
    missing = [n for n in want if n not in where]
    if missing:
        raise CheckpointError(f"{ckpt}: checkpoint lacks {missing[0]!r} ({len(missing)} tensors missing) for "
                              f"its own config.json")
    extra = [n for n in where if n not in want]
    if extra:
        raise CheckpointError(f"{ckpt}: model/index.json lists {extra[0]!r} ({len(extra)} tensors), which the "
                              f"model of its config.json does not have")
    for part in sorted(set(where.values())):
        md = part_metadata(ckpt / "model" / part)
        for n in (n for n in want if where[n] == part):
            if n not in md:
                raise CheckpointError(f"{ckpt / 'model' / part}: part lacks {n!r}, which model/index.json lists")
            if md[n][0] != want[n]:
                raise CheckpointError(f"{ckpt / 'model' / part}: {n} has shape {md[n][0]} but config.json "
                                      f"implies {want[n]}")
    return model_cfg, moe_cfg, raw
