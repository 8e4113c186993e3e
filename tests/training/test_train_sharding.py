"""train.sharding zero2 / fsdp (FSDP2 over dp and edp) on gloo ranks compute the single-process function.

Noisy gate, global balance loss and gradient accumulation are on (2 micro-batches of 1 per rank; the reference is
1 process with 1 micro-batch of 4), so losses, gradient norms and balance losses of 4 steps must match to 1e-5
(moe.balance_scope=global makes the split irrelevant: test_train_accumulation.py). Layouts:
  EP=2 on 2 ranks (dense FSDP over dp=2, experts over edp=1), TP=2+SP on 2 ranks (dense over dp=1, experts
  replicated over both TP ranks: FSDP over edp=2), FSDP with optimizer offload at EP=2 (on CPU the offload
  policy's code path runs, nothing moves), and FSDP x EP=2 x TP=2+SP on 4 ranks (dp=2, edp=2).
Checkpoints: FSDP EP=2 saved at step 2 resumes in 1 process with zero1 (and a 1-process checkpoint resumes under
FSDP EP=2) with the reference's losses; in the same layout the resume is bitwise.
"""
import shutil

import pytest
import torch

from _dist import spawn
from _train_helpers import prepared, randomize_routers, tiny_config, write_corpus
from megatron_moe.parallel import ParallelState
from megatron_moe.training import build_trainer

STEPS, SAVE = 4, 2


def _cfg(prefixes, run_dir, micro, sharding="none", save_interval=0, **par):
    cfg = tiny_config(prefixes, run_dir, moe=True, train_steps=STEPS, micro_batch_size=micro, global_batch_size=4,
                      save_interval=save_interval)
    cfg.moe.router, cfg.moe.noisy_gate, cfg.moe.gate_network = "noisy_topk", True, "linear"
    cfg.moe.balance_scope, cfg.moe.aux_loss_coeff = "global", 0.05
    cfg.train.sharding = sharding
    cfg.train.offload_optimizer = par.pop("offload", False)
    for k, v in par.items():
        setattr(cfg.parallel, k, v)
    return cfg


def _train(cfg, ps, world=1, until=None, randomize=True):
    trainer = build_trainer(prepared(cfg, world), ps)
    if randomize and trainer.step == 0:
        randomize_routers(trainer)
    hist = trainer.train(until=until)
    if until is not None:
        trainer.save()
    sharded = trainer.sharded
    trainer.close()
    return [(r["loss"], r["grad_norm"], r["aux_loss"]) for r in hist], sharded


def _layouts(rank, world, prefixes, root, layouts):
    from megatron_moe.parallel import init_parallel

    out = {}
    for name, sharding, par in layouts:
        cfg = _cfg(prefixes, root / name, 1, sharding, **dict(par))
        out[name] = _train(cfg, init_parallel(prepared(cfg, world).parallel), world)
    return out


def _close(a, b, tol=1e-5):
    """(loss, grad norm, aux) of every step equal to `tol` (relative above 1)."""
    return len(a) == len(b) and all(abs(x - y) <= tol * max(1.0, abs(y)) for ra, rb in zip(a, b)
                                    for x, y in zip(ra, rb))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    prefixes = write_corpus(root / "data")
    ref, _ = _train(_cfg(prefixes, root / "ref", 4), ParallelState())
    return root, prefixes, ref


LAYOUTS_2 = [("zero2_ep2", "zero2", dict(ep=2)), ("fsdp_ep2", "fsdp", dict(ep=2)),
             ("zero2_tp2sp", "zero2", dict(tp=2, sp=True)), ("fsdp_tp2sp", "fsdp", dict(tp=2, sp=True)),
             ("fsdp_ep2_offload", "fsdp", dict(ep=2, offload=True))]


@pytest.mark.dist
def test_zero2_and_fsdp_match_single_process(corpus):
    root, prefixes, ref = corpus
    res = spawn(_layouts, 2, prefixes, root, LAYOUTS_2)
    assert ref[0][2] > 0 and len(ref) == STEPS
    for name, _, _ in LAYOUTS_2:
        got, sharded = res[0][name]
        assert sharded, name  # the model really was wrapped by FSDP2
        assert res[0][name] == res[1][name], name
        assert _close(got, ref), (name, got, ref)


def _fsdp_ep2_tp2(rank, world, prefixes, root):
    return _layouts(rank, world, prefixes, root, [("fsdp_ep2_tp2", "fsdp", dict(ep=2, tp=2, sp=True))])


@pytest.mark.dist
def test_fsdp_ep2_tp2_on_four_ranks(corpus):
    root, prefixes, ref = corpus
    res = spawn(_fsdp_ep2_tp2, 4, prefixes, root)
    got, sharded = res[0]["fsdp_ep2_tp2"]
    assert sharded and all(r == res[0] for r in res[1:])
    assert _close(got, ref), (got, ref)


def _resume_runs(rank, world, prefixes, root):
    """FSDP EP=2: save at step 2 (for the 1-process zero1 resume), resume it in the same layout, the uninterrupted
    run, and resume a 1-process checkpoint."""
    from megatron_moe.parallel import init_parallel

    out = {}

    def run(name, until=None, **kw):
        cfg = _cfg(prefixes, root / name, 1, "fsdp", save_interval=SAVE, ep=2)
        return _train(cfg, init_parallel(prepared(cfg, world).parallel), world, until=until, **kw)[0]

    out["first"] = run("fsdp_saved", until=SAVE)
    if rank == 0:
        shutil.copytree(root / "fsdp_saved", root / "fsdp_again")
    torch.distributed.barrier()
    out["again"] = run("fsdp_again")
    out["whole"] = run("fsdp_whole")
    out["from_single"] = run("single_saved")
    return out


@pytest.mark.dist
def test_resume_across_sharding_modes(corpus):
    root, prefixes, ref = corpus
    # a 1-process checkpoint at step 2 for FSDP EP=2 to resume
    _train(_cfg(prefixes, root / "single_saved", 4, save_interval=SAVE), ParallelState(), until=SAVE)
    res = spawn(_resume_runs, 2, prefixes, root)
    r = res[0]
    assert _close(r["first"], ref[:SAVE]) and _close(r["from_single"], ref[SAVE:]), (r, ref)
    # same layout: bitwise
    assert r["again"] == r["whole"][SAVE:], (r["again"], r["whole"])
    # FSDP EP=2 checkpoint -> ZeRO-1 in one process
    shutil.copytree(root / "fsdp_saved", root / "fsdp_to_zero1")
    got, _ = _train(_cfg(prefixes, root / "fsdp_to_zero1", 4, "zero1"), ParallelState())
    assert _close(got, ref[SAVE:]), (got, ref)


def _wrapped(rank, world, prefixes, root):
    """Under FSDP2 every parameter is a DTensor (no attribute of the built Parameter survives) while the sharding
    table, keyed by name, still says which are experts and how they are cut; zero2 keeps a layer's gathered
    weights from forward to backward, fsdp frees them after the layer's forward."""
    from torch.distributed.tensor import DTensor

    from megatron_moe.model.sharding import sharding_table
    from megatron_moe.parallel import init_parallel

    out = {}
    for mode in ("zero2", "fsdp"):
        cfg = tiny_config(prefixes, root / f"wrapped_{mode}", moe=True, train_steps=1)
        cfg.parallel.ep, cfg.train.sharding = 2, mode
        trainer = build_trainer(prepared(cfg, world), init_parallel(prepared(cfg, world).parallel))
        model, table = trainer.model, sharding_table(trainer.model)
        named = dict(model.named_parameters())
        out[mode] = {"all_dtensor": all(isinstance(p, DTensor) for p in named.values()),
                     "names": sorted(named) == sorted(n for n in table if n in named),
                     "experts": sorted(n for n in named if table[n].is_expert),
                     "ep_split": [s.axis for s in table["layers.0.mlp.experts.w1"].splits],
                     "expert_mesh": named["layers.0.mlp.experts.w1"].device_mesh.size(),
                     "dense_mesh": named["layers.0.attn.wq.weight"].device_mesh.size()}
        model(torch.randint(0, 96, (1, 8)))
        out[mode]["gathered_after_forward"] = not isinstance(model.layers[0].attn.wq.weight, DTensor)
        trainer.close()
    return out


@pytest.mark.dist
def test_sharding_table_survives_fsdp2_and_zero2_keeps_weights_gathered(corpus):
    root, prefixes, _ = corpus
    res = spawn(_wrapped, 2, prefixes, root)[0]
    experts = [f"layers.{i}.mlp.experts.{w}" for i in range(2) for w in ("w1", "w2", "w3")]
    for mode in ("zero2", "fsdp"):
        r = res[mode]
        assert r["all_dtensor"] and r["names"] and r["experts"] == sorted(experts), (mode, r)
        assert r["ep_split"] == ["ep"] and (r["expert_mesh"], r["dense_mesh"]) == (1, 2), (mode, r)
    assert res["zero2"]["gathered_after_forward"] and not res["fsdp"]["gathered_after_forward"]


def _bf16(rank, world, prefixes, root):
    """train.precision=bf16 under fsdp: layers compute with bf16 weights gathered from fp32 shards."""
    from megatron_moe.parallel import init_parallel

    cfg = _cfg(prefixes, root / "fsdp_bf16", 1, "fsdp", ep=2)
    cfg.train.precision = "bf16"
    trainer = build_trainer(prepared(cfg, world), init_parallel(prepared(cfg, world).parallel))
    randomize_routers(trainer)
    seen = {}
    wq = trainer.model.layers[0].attn.wq
    hook = wq.register_forward_pre_hook(lambda mod, args: seen.setdefault("dtype", str(mod.weight.dtype)) and None)
    hist = trainer.train()
    hook.remove()
    master = str(next(trainer.model.parameters()).dtype)
    trainer.close()
    return {"loss": [r["loss"] for r in hist], "compute": seen["dtype"], "master": master}


@pytest.mark.dist
def test_fsdp_bf16_mixed_precision(corpus):
    """bf16 compute weights, fp32 master shards; the losses follow the fp32 reference to bf16 accuracy (not 1e-5:
    a wrong reduction or a missing gradient would be far off after 4 steps)."""
    root, prefixes, ref = corpus
    res = spawn(_bf16, 2, prefixes, root)[0]
    assert (res["compute"], res["master"]) == ("torch.bfloat16", "torch.float32"), res
    assert all(abs(a - b[0]) <= 0.05 * abs(b[0]) for a, b in zip(res["loss"], ref)), (res["loss"], ref)
    assert res["loss"][-1] < res["loss"][0]
