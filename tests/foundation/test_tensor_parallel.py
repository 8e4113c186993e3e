"""TP=2 (with and without SP) computes the same logits, loss and gradients as one process, for plain LLaMA, a
Qwen2-style model (q/k/v biases, tied embeddings) and one with every optional feature (q/k/v/o biases, head_dim
override, llama3 rope). Gradients go through the trainer's own sync (training/grads.py)."""
import pytest
import torch

from _dist import spawn
from megatron_moe.config import Config, ModelConfig, ParallelConfig
from megatron_moe.model import build_model, init_weights
from megatron_moe.model.sharding import local_slice, sharding_table

BASE = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=256,
            max_seq_len=32)
MODELS = {
    "llama": ModelConfig(**BASE),
    "qwen2-tied": ModelConfig(**BASE, qkv_bias=True, tie_embeddings=True, rope_theta=1e6),
    "all-features": ModelConfig(**BASE, qkv_bias=True, attn_out_bias=True, head_dim=24,
                                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
}


def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (2, 17), generator=g)
    return ids[:, :-1], ids[:, 1:]


def run(model):
    x, y = batch()
    logits = model(x)
    loss, _ = model.loss(x, y)
    loss.backward()
    return logits.detach(), loss.detach()


def init(model):
    """init_weights, then random biases (they are zero-initialised): one global tensor per name, this rank's slice."""
    init_weights(model, seed=7)
    table = sharding_table(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                full = torch.randn(table[n].global_shape(p.shape), generator=torch.Generator().manual_seed(len(n)))
                p.copy_(table[n].local_slice(full))


def reference(name):
    model = build_model(Config(model=MODELS[name]))
    init(model)
    logits, loss = run(model)
    return logits, loss, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def tp_worker(rank, world, name, sp):
    from megatron_moe.parallel import init_parallel
    from megatron_moe.training.grads import sync_grads

    cfg = Config(model=MODELS[name], parallel=ParallelConfig(tp=world, sp=sp))
    ps = init_parallel(cfg.parallel)
    model = build_model(cfg, ps)
    init(model)
    logits, loss = run(model)
    sync_grads(model, ps)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    splits = {n: [(s.axis, s.dim, s.size, s.rank) for s in spec.splits] for n, spec in sharding_table(model).items()}
    return {"logits": logits, "loss": loss, "grads": grads, "splits": splits}


@pytest.mark.dist
@pytest.mark.parametrize("sp", [False, True], ids=["tp2", "tp2-sp"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_tp2_matches_tp1(name, sp):
    from megatron_moe.model.sharding import Split

    ref_logits, ref_loss, ref_grads = reference(name)
    results = spawn(tp_worker, 2, name, sp)
    for r in results:
        assert torch.allclose(r["logits"], ref_logits, atol=1e-5, rtol=0)
        assert abs(r["loss"].item() - ref_loss.item()) <= 1e-5
        assert set(r["grads"]) == set(ref_grads)
        for n, g in r["grads"].items():
            want = local_slice(ref_grads[n], [Split(*s) for s in r["splits"][n]])
            assert g.shape == want.shape, n
            assert (g - want).abs().max().item() <= 1e-5, n
    grads = results[0]["grads"]
    assert grads["layers.0.attn.wq.weight"].shape[0] == ref_grads["layers.0.attn.wq.weight"].shape[0] // 2
    if MODELS[name].tie_embeddings:  # one parameter serves as embedding and LM head
        assert "lm_head.weight" not in grads and grads["embed.weight"].shape[0] == 128
    if MODELS[name].qkv_bias:
        assert grads["layers.0.attn.wq.bias"].shape[0] == ref_grads["layers.0.attn.wq.bias"].shape[0] // 2
