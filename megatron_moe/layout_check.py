"""Check that a parallel layout computes the same function as one process: load a checkpoint in the requested
TP/EP/SP layout, run fixed token ids, and compare the logits with a single-process model on rank 0."""
from __future__ import annotations

import logging

import torch

from .checkpoint import load_into, read_config
from .config import Config, ParallelConfig
from .model import build_model
from .parallel import broadcast_, detect_launch_env, destroy_parallel, gather_seq, init_parallel, world_group

log = logging.getLogger(__name__)


@torch.no_grad()
def check_layout(load: str, tp: int = 1, ep: int = 1, etp: int | None = None, sp: bool = False,
                 seq_len: int = 32, batch: int = 2, seed: int = 0) -> float:
    """Returns max |logits(layout) - logits(1 process)| (on every rank; computed on rank 0)."""
    model_cfg, moe_cfg, _ = read_config(load)
    cfg = Config(model=model_cfg, moe=moe_cfg, parallel=ParallelConfig(tp=tp, ep=ep, etp=etp, sp=sp))
    world = detect_launch_env().world_size
    cfg.parallel.validate(world, cfg.model, cfg.moe)
    ps = init_parallel(cfg.parallel)
    try:
        model = build_model(cfg, ps).eval()
        load_into(model, load)
        g = torch.Generator().manual_seed(seed)
        seq_len = min(seq_len, model_cfg.max_seq_len)
        ids_BS = torch.randint(0, model_cfg.vocab_size, (batch * ps.dp_size, seq_len), generator=g)
        mine_BS = ids_BS[ps.dp_rank * batch:(ps.dp_rank + 1) * batch].to(ps.device)
        logits = model(mine_BS).float().cpu()
        parts = gather_seq(logits.to(ps.device), world_group(), dim=0).cpu().chunk(ps.world_size, dim=0)
        delta = torch.zeros(1)
        if ps.rank == 0:
            ref_model = build_model(Config(model=model_cfg, moe=moe_cfg)).eval()
            load_into(ref_model, load, collective=False)
            ref = ref_model(ids_BS).float()
            got = torch.cat([parts[r * ps.tp_size].cpu() for r in range(ps.dp_size)])  # one TP rank per DP rank
            delta[0] = (got - ref).abs().max()
            log.info("layout tp=%d ep=%d sp=%s on %d ranks: max |logits - single-process logits| = %.3g",
                     tp, ep, sp, ps.world_size, delta.item())
        broadcast_(delta, src=0)
        return delta.item()
    finally:
        destroy_parallel()
