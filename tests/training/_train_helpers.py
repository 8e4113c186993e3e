"""Tiny configs and a small two-domain indexed corpus for training tests."""
from pathlib import Path

import numpy as np
import torch

from megatron_moe.config import Config, DataConfig, DomainConfig, ModelConfig, MoEConfig, TrainConfig


def write_corpus(root: Path, vocab: int = 96, seed: int = 0) -> dict:
    """Two domains of learnable token streams (repeating patterns), written with megatron-core's builder."""
    from megatron_moe.data._mcore import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    prefixes = {}
    root.mkdir(parents=True, exist_ok=True)
    for d, name in enumerate(("alpha", "beta")):
        prefix = root / f"{name}_text_document"
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
        for _ in range(60):
            period = int(rng.integers(3, 7))
            start = int(rng.integers(3, vocab - period))
            pattern = [start + (k * (d + 1)) % period for k in range(period)]
            n = int(rng.integers(20, 60))
            doc = [1] + [pattern[k % period] for k in range(n)]
            builder.add_item(torch.tensor(doc, dtype=torch.int64))
            builder.end_document()
        builder.finalize(f"{prefix}.idx")
        prefixes[name] = str(prefix)
    return prefixes


def tiny_config(prefixes: dict, run_dir: Path, moe: bool = False, save_interval: int = 0, **train) -> Config:
    model = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        vocab_size=96, max_seq_len=32)
    moe_cfg = MoEConfig(num_experts=4, top_k=2, router="softmax_topk", noisy_gate=False) if moe else MoEConfig()
    data = DataConfig(domains=[DomainConfig(name=n, prefixes=[p], weight=1.0) for n, p in prefixes.items()],
                      seq_len=16, valid_fraction=0.1, seed=7)
    t = dict(micro_batch_size=2, global_batch_size=4, train_steps=6, lr=3e-3, warmup_steps=2, eval_interval=0,
             eval_iters=1, seed=11)
    t.update(train)
    cfg = Config(model=model, moe=moe_cfg, data=data, train=TrainConfig(**t))
    cfg.logging.run_dir = str(run_dir)
    cfg.logging.tensorboard = False
    cfg.checkpoint.save_interval = save_interval
    return cfg


def randomize_routers(trainer, seed: int = 3) -> None:
    """Give routers small random weights (as a trained/converted model has) instead of the zero init, so tokens
    spread over the experts of both EP ranks. Routers are replicated and each is drawn from a generator seeded by
    its name, so every layout (also a pipeline stage holding some of the layers) gets the same values."""
    import zlib

    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if ".router." in name:
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                full = torch.randn(p.shape, generator=g) * 0.5
                if hasattr(p, "device_mesh"):  # an FSDP2 DTensor: every rank has `full`, each keeps its shard
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full, p.device_mesh, p.placements)
                p.copy_(full)


def prepared(cfg: Config, world: int = 1) -> Config:
    """cfg after the trainer's start-up checks (model/moe taken from checkpoint.load or the run's latest)."""
    from megatron_moe.training import preflight

    preflight(cfg, world)
    return cfg
