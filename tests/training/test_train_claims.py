"""Each README claim about training gets a test of what it says: SLURM detection, TensorBoard events and wandb
offline files, activation recomputation, ZeRO-1 with EP > 1, capacity dropping (logged, on 1 and 2 ranks), the
sigmoid router's bias update on 2 ranks, layer_freq, and MFU accounting."""

import pytest
import torch

from _dist import spawn
from _train_helpers import prepared, randomize_routers, tiny_config, write_corpus
from megatron_moe.parallel import ParallelState
from megatron_moe.training import build_trainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    return root, write_corpus(root / "data")


def _train(cfg, ps=None, world=1, steps=None):
    trainer = build_trainer(prepared(cfg, world), ps or ParallelState())
    randomize_routers(trainer)
    hist = trainer.train(until=steps)
    return trainer, hist


def test_slurm_environment_detection():
    from megatron_moe.parallel.env import detect_launch_env, first_host

    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_NODELIST": "gpu-[007-008,010],cpu01", "PATH": "/nonexistent"}
    got = detect_launch_env(env)
    assert (got.rank, got.world_size, got.local_rank, got.launcher) == (5, 16, 1, "slurm")
    assert got.master_addr == "gpu-007" and got.master_port == 29500
    assert detect_launch_env({**env, "MASTER_ADDR": "head", "MASTER_PORT": "1234"}).master_addr == "head"
    assert first_host("node12") == "node12"
    torchrun = detect_launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", **env})
    assert torchrun.launcher == "torchrun" and torchrun.rank == 1  # torchrun's variables win inside slurm
    assert detect_launch_env({}).launcher == "single"


def test_tensorboard_events_and_wandb_offline(corpus, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, prefixes = corpus
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(prefixes, tmp_path / "run", moe=True, train_steps=2)
    cfg.logging.tensorboard, cfg.logging.wandb_project = True, "megatron-moe-test"
    trainer, hist = _train(cfg)
    trainer.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    loss = [e.value for e in acc.Scalars("loss")]
    assert loss == pytest.approx([r["loss"] for r in hist], rel=1e-6)
    assert "expert_load/layer_0/max_vio" in acc.Tags()["scalars"]
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), "no offline wandb run to `wandb sync`"


def test_recompute_gives_the_same_training(corpus, tmp_path):
    _, prefixes = corpus
    runs = {}
    for rec in (False, True):
        cfg = tiny_config(prefixes, tmp_path / f"r{rec}", moe=True, train_steps=3)
        cfg.moe.router, cfg.moe.noisy_gate = "noisy_topk", True  # recompute must replay the noise too
        cfg.train.recompute = rec
        trainer, hist = _train(cfg)
        runs[rec] = ([(r["loss"], r["grad_norm"]) for r in hist], {n: p.detach().clone() for n, p in
                                                                  trainer.model.named_parameters()})
        assert trainer.model.recompute is rec
        trainer.close()
    assert runs[True][0] == runs[False][0]
    assert all(torch.equal(runs[True][1][n], runs[False][1][n]) for n in runs[False][1])


def _ep2_zero1_sigmoid(rank, world, prefixes, root):
    from megatron_moe.parallel import init_parallel

    out = {}
    cfg = tiny_config(prefixes, root / "ep2zero", moe=True, train_steps=3, micro_batch_size=2)
    cfg.parallel.ep, cfg.train.sharding = 2, "zero1"
    trainer, hist = _train(cfg, init_parallel(prepared(cfg, world).parallel), world)
    out["zero1"] = [r["loss"] for r in hist]
    out["zero1_dense_sharded"] = trainer.optimizer.parts[0][1]
    trainer.close()
    cfg = tiny_config(prefixes, root / "ep2sig", moe=True, train_steps=3, micro_batch_size=2)
    cfg.parallel.ep, cfg.moe.router, cfg.moe.bias_update_rate = 2, "sigmoid", 0.05
    trainer, hist = _train(cfg, init_parallel(prepared(cfg, world).parallel), world)
    out["sigmoid"] = [r["loss"] for r in hist]
    out["bias"] = [layer.router.expert_bias.clone() for layer in trainer.moe]
    trainer.close()
    cfg = tiny_config(prefixes, root / "ep2cap", moe=True, train_steps=2, micro_batch_size=2)
    cfg.parallel.ep, cfg.moe.capacity_factor = 2, 0.5
    trainer, hist = _train(cfg, init_parallel(prepared(cfg, world).parallel), world)
    out["dropped"] = [r["expert_load"]["layer_0"]["dropped_frac"] for r in hist]
    trainer.close()
    return out


@pytest.mark.dist
def test_zero1_sigmoid_bias_and_capacity_on_two_ranks(corpus):
    root, prefixes = corpus
    res = spawn(_ep2_zero1_sigmoid, 2, prefixes, root)
    ref = {}
    for name, extra in (("zero1", {}), ("sigmoid", {"router": "sigmoid", "bias_update_rate": 0.05})):
        cfg = tiny_config(prefixes, root / f"ref_{name}", moe=True, train_steps=3, micro_batch_size=4)
        for k, v in extra.items():
            setattr(cfg.moe, k, v)
        trainer, hist = _train(cfg)
        ref[name] = [r["loss"] for r in hist]
        if name == "sigmoid":
            ref["bias"] = [layer.router.expert_bias.clone() for layer in trainer.moe]
        trainer.close()
    assert res[0]["zero1_dense_sharded"]  # ZeRO-1 really shards the dense AdamW state over dp=2
    for key in ("zero1", "sigmoid"):
        assert res[0][key] == res[1][key]
        assert all(abs(a - b) <= 1e-5 for a, b in zip(res[0][key], ref[key], strict=True)), (key, res[0][key], ref[key])
    for r in res:  # the aux-loss-free bias update is the same on both ranks and as on one process
        for got, want in zip(r["bias"], ref["bias"], strict=True):
            assert torch.allclose(got, want, atol=1e-7) and want.abs().sum() > 0
    assert all(d > 0 for d in res[0]["dropped"])  # capacity 0.5 drops assignments, and the step logs it


def test_capacity_dropping_single_process(corpus, tmp_path):
    _, prefixes = corpus
    cfg = tiny_config(prefixes, tmp_path / "cap", moe=True, train_steps=2, micro_batch_size=4)
    cfg.moe.capacity_factor = 0.5
    trainer, hist = _train(cfg)
    trainer.close()
    for r in hist:  # at most half the assignments fit: at least half are dropped
        assert all(v["dropped_frac"] >= 0.5 for v in r["expert_load"].values()) and r["loss"] == r["loss"]


def test_layer_freq_builds_and_trains_alternating_layers(corpus, tmp_path):
    from megatron_moe.model.layers import DenseMLP
    from megatron_moe.model.moe import MoELayer

    _, prefixes = corpus
    cfg = tiny_config(prefixes, tmp_path / "freq", moe=True, train_steps=1)
    cfg.model.num_layers, cfg.moe.layer_freq = 4, 2
    trainer, hist = _train(cfg)
    kinds = [type(layer.mlp) for layer in trainer.model.layers]
    trainer.close()
    assert kinds == [MoELayer, DenseMLP, MoELayer, DenseMLP]
    assert sorted(hist[0]["expert_load"]) == ["layer_0", "layer_2"]


@pytest.mark.parametrize("tied", [False, True])
def test_mfu_accounting(tied):
    """6 * (activated parameters - embedding lookup) + attention, by hand for a tiny MoE."""
    from megatron_moe.config import Config, ModelConfig, MoEConfig
    from megatron_moe.training.metrics import train_flops_per_token

    V, D, F, L, E, K, Fe, S = 100, 16, 64, 2, 4, 2, 16, 32
    cfg = Config(model=ModelConfig(hidden_size=D, intermediate_size=F, num_layers=L, num_heads=2, num_kv_heads=1,
                                   vocab_size=V, tie_embeddings=tied),
                 moe=MoEConfig(num_experts=E, top_k=K, router="softmax_topk"))
    cfg.data.seq_len = S
    h = D // 2
    attn = D * D + 2 * D * h + D * D + 2 * D  # wq, wk + wv (one kv head), wo, two norms
    router, experts_active = E * D, K * 3 * D * Fe
    activated = (1 if tied else 2) * V * D + D + L * (attn + router + experts_active)
    lookup = 0 if tied else V * D
    assert train_flops_per_token(cfg) == 6 * (activated - lookup) + 6 * L * S * D
