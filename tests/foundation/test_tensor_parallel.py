"""TP=2 (with and without SP) computes the same logits, loss and gradients as one process."""
import pytest
import torch

from _dist import spawn
from megatron_moe.config import Config, ModelConfig, ParallelConfig
from megatron_moe.model import build_model, init_weights
from megatron_moe.model.sharding import local_slice, splits_of

MODEL = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                    vocab_size=256, max_seq_len=32)


def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (2, 17), generator=g)
    return ids[:, :-1], ids[:, 1:]


def run(model):
    x, y = batch()
    logits = model(x)
    loss, _ = model.loss(x, y)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def reference():
    model = build_model(Config(model=MODEL))
    init_weights(model, seed=7)
    return run(model)


def tp_worker(rank, world, sp):
    from megatron_moe.parallel import init_parallel

    cfg = Config(model=MODEL, parallel=ParallelConfig(tp=world, sp=sp))
    ps = init_parallel(cfg.parallel)
    model = build_model(cfg, ps)
    init_weights(model, seed=7)
    logits, loss, grads = run(model)
    # sequence-parallel norm grads are partial per rank: the trainer all-reduces them; do it here
    if sp:
        import torch.distributed as dist

        for n, p in model.named_parameters():
            if getattr(p, "sequence_parallel", False):
                dist.all_reduce(grads[n], group=ps.tp_group)
    splits = {n: [(s.dim, s.size, s.rank) for s in splits_of(p)] for n, p in model.named_parameters()}
    return {"logits": logits, "loss": loss, "grads": grads, "splits": splits}


@pytest.mark.dist
@pytest.mark.parametrize("sp", [False, True])
def test_tp2_matches_tp1(sp):
    from megatron_moe.model.sharding import Split

    ref_logits, ref_loss, ref_grads = reference()
    results = spawn(tp_worker, 2, sp)
    for r in results:
        assert torch.allclose(r["logits"], ref_logits, atol=1e-5, rtol=0)
        assert abs(r["loss"].item() - ref_loss.item()) <= 1e-5
        for name, g in r["grads"].items():
            want = local_slice(ref_grads[name], [Split(*s) for s in r["splits"][name]])
            assert g.shape == want.shape, name
            assert (g - want).abs().max().item() <= 1e-5, name
    # the sharded weights really are sharded
    assert results[0]["grads"]["layers.0.attn.wq.weight"].shape[0] == ref_grads["layers.0.attn.wq.weight"].shape[0] // 2
