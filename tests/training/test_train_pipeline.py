"""Pipeline parallelism (parallel.pp) computes the function of one process.

A 4-layer MoE model with the noisy gate, router aux loss and z-loss, trained with 4 micro-batches per step
(gradient accumulation): PP=2 on 2 gloo ranks gives the per-step losses, gradient norms (taken over both stages)
and aux losses of one process to 1e-5, also with moe.balance_scope=global (the pre-pass runs through the pipeline)
and with recompute, in flushes of 2 micro-batches (parallel.pp_flush), and in bf16 (autocast keeps the fp32 residual stream at the boundary: one bf16 process's
numbers); on 4 ranks PP=2 composes with EP=2, with TP=2 + SP, with ETP=2, with TP=2 + SP x EP=2, with ZeRO-1 and with FSDP2 (also bf16 FSDP2, whose
boundary is bf16, against dp=4); an uneven layer layout ([1, 3]) gives
the same function; a PP=2 checkpoint resumes in one process and a one-process checkpoint resumes at PP=2 with the
losses of the uninterrupted run; validation losses agree. A wrong split (a stage skipping or repeating a layer,
noise keyed per stage, a loss scaled per stage, a norm over one stage) fails these.
"""
import pytest

from _dist import spawn
from _train_helpers import prepared, randomize_routers, tiny_config, write_corpus
from megatron_moe.parallel import ParallelState
from megatron_moe.training import build_trainer

STEPS = 4
TOL = 1e-5


def _cfg(prefixes, run_dir, scope="micro", **over):
    cfg = tiny_config(prefixes, run_dir, moe=True, train_steps=over.pop("train_steps", STEPS), micro_batch_size=1,
                      global_batch_size=4, eval_interval=over.pop("eval_interval", 0), eval_iters=1, **over)
    cfg.model.num_layers = 4
    cfg.moe.router, cfg.moe.noisy_gate, cfg.moe.gate_network = "noisy_topk", True, "linear"
    cfg.moe.balance_scope, cfg.moe.aux_loss_coeff, cfg.moe.z_loss_coeff = scope, 0.05, 0.01
    return cfg


def _records(trainer, hist):
    return [(r["loss"], r["grad_norm"], r["aux_loss"]) for r in hist]


def _train(cfg, ps, world=1, steps=None):
    trainer = build_trainer(prepared(cfg, world), ps)
    randomize_routers(trainer)
    hist = trainer.train(until=steps)
    valid = trainer.evaluate()["valid_loss"] if cfg.train.eval_interval else {}
    trainer.close()
    return {"steps": _records(trainer, hist), "valid": valid,
            "load": {k: v["max"] for k, v in (hist[-1].get("expert_load") or {}).items()}}


def _pipelined(rank, world, prefixes, root, runs):
    from megatron_moe.parallel import init_parallel

    out = {}
    for name, over in runs:
        cfg = _cfg(prefixes, root / f"{name}_w{world}", **over.get("cfg", {}))
        for k, v in over.get("parallel", {}).items():
            setattr(cfg.parallel, k, v)
        cfg.train.recompute = over.get("recompute", False)
        ps = init_parallel(prepared(cfg, world).parallel)
        out[name] = _train(cfg, ps, world)
    return out


def _close(a, b, tol=TOL):
    return len(a) == len(b) and all(abs(x - y) <= tol * max(1.0, abs(y)) for ra, rb in zip(a, b, strict=True)
                                    for x, y in zip(ra, rb, strict=True))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return root, write_corpus(root / "data")


@pytest.fixture(scope="module")
def single(corpus):
    root, prefixes = corpus
    out = {scope: _train(_cfg(prefixes, root / f"single_{scope}", scope, eval_interval=STEPS), ParallelState())
           for scope in ("micro", "global")}
    out["bf16"] = _train(_cfg(prefixes, root / "single_bf16", precision="bf16"), ParallelState())
    return out


@pytest.mark.dist
def test_pp2_matches_one_process(corpus, single):
    root, prefixes = corpus
    runs = [("pp2", {"parallel": {"pp": 2}, "cfg": {"eval_interval": STEPS}}),
            ("pp2_global", {"parallel": {"pp": 2}, "cfg": {"scope": "global"}}),
            ("pp2_recompute", {"parallel": {"pp": 2}, "recompute": True}),
            ("pp2_uneven", {"parallel": {"pp": 2, "pp_layout": [1, 3]}}),
            ("pp2_bf16", {"parallel": {"pp": 2}, "cfg": {"precision": "bf16"}}),
            ("pp2_flush2", {"parallel": {"pp": 2, "pp_flush": 2}, "cfg": {"scope": "global"}})]
    res = spawn(_pipelined, 2, prefixes, root, runs)
    ref, ref_global = single["micro"]["steps"], single["global"]["steps"]
    assert ref[0][2] > 0 and min(r[0] for r in ref) < ref[0][0]  # the aux loss is on and the model learns
    for name in ("pp2", "pp2_recompute", "pp2_uneven"):
        assert res[0][name]["steps"] == res[1][name]["steps"], name  # every stage logs the same record
        assert _close(res[0][name]["steps"], ref), (name, res[0][name]["steps"], ref)
    assert _close(res[0]["pp2_global"]["steps"], ref_global), (res[0]["pp2_global"]["steps"], ref_global)
    # two flushes of 2 micro-batches per step (and the balance pre-pass in two flushes too): the same function
    assert _close(res[0]["pp2_flush2"]["steps"], ref_global), (res[0]["pp2_flush2"]["steps"], ref_global)
    # bf16 autocast keeps the residual stream (the stage boundary) in fp32: one bf16 process's numbers
    bf16, ref_bf16 = res[0]["pp2_bf16"]["steps"], single["bf16"]["steps"]
    assert _close(bf16, ref_bf16) and not _close(bf16, ref), (bf16, ref_bf16)
    # the last step's per-layer loads come from both stages
    assert res[0]["pp2"]["load"].keys() == single["micro"]["load"].keys() and len(res[0]["pp2"]["load"]) == 4
    for k, v in single["micro"]["valid"].items():
        assert abs(res[0]["pp2"]["valid"][k] - v) <= TOL, (res[0]["pp2"]["valid"], single["micro"]["valid"])


@pytest.mark.dist
def test_pp2_composes_with_ep_tp_sp_and_sharding(corpus, single):
    """4 ranks: PP=2 x EP=2 (dp=2), PP=2 x TP=2 + SP, PP=2 x ETP=2, PP=2 x TP=2 + SP x EP=2, PP=2 x dp=2 with
    ZeRO-1 and with FSDP2. With dp=2 a
    micro-batch holds 2 sequences, so the balance scope is global (independent of the split)."""
    root, prefixes = corpus
    runs = [("pp2ep2", {"parallel": {"pp": 2, "ep": 2}}),
            ("pp2tp2sp", {"parallel": {"pp": 2, "tp": 2, "sp": True}}),
            ("pp2etp2", {"parallel": {"pp": 2, "etp": 2}}),
            ("pp2tp2sp_ep2", {"parallel": {"pp": 2, "tp": 2, "sp": True, "ep": 2}}),
            ("pp2zero1", {"parallel": {"pp": 2}, "cfg": {"sharding": "zero1"}}),
            ("pp2fsdp", {"parallel": {"pp": 2}, "cfg": {"sharding": "fsdp"}}),
            # bf16: FSDP2's bf16 compute weights make the stage boundary bf16; against dp=4 with the same weights
            ("pp2fsdp_bf16", {"parallel": {"pp": 2}, "cfg": {"sharding": "fsdp", "precision": "bf16"}}),
            ("dp4fsdp_bf16", {"cfg": {"sharding": "fsdp", "precision": "bf16"}})]
    for _, run in runs:
        run.setdefault("cfg", {})["scope"] = "global"
    res = spawn(_pipelined, 4, prefixes, root, runs, timeout=480)
    ref = single["global"]["steps"]
    for name, _ in runs:
        assert all(r[name]["steps"] == res[0][name]["steps"] for r in res), name
        if "bf16" not in name:
            assert _close(res[0][name]["steps"], ref), (name, res[0][name]["steps"], ref)
    bf16, ref_bf16 = res[0]["pp2fsdp_bf16"]["steps"], res[0]["dp4fsdp_bf16"]["steps"]
    assert _close(bf16, ref_bf16) and not _close(bf16, ref), (bf16, ref_bf16, ref)


def _save_then_resume(rank, world, prefixes, root, pp_first, pp_then):
    """Train 2 steps at pp_first and save; then continue to STEPS at pp_then from that checkpoint."""
    from megatron_moe.parallel import init_parallel

    out = []
    for pp, until in ((pp_first, 2), (pp_then, STEPS)):
        cfg = _cfg(prefixes, root / f"resume_{pp_first}to{pp_then}", "global")
        cfg.parallel.pp = pp
        ps = init_parallel(prepared(cfg, world).parallel)
        trainer = build_trainer(cfg, ps)
        if trainer.step == 0:
            randomize_routers(trainer)
        out += _records(trainer, trainer.train(until=until))
        trainer.save()
        trainer.close()
    return out


@pytest.mark.dist
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["pp2-to-pp1", "pp1-to-pp2"])
def test_checkpoint_resumes_in_another_pipeline_layout(corpus, single, first, then):
    """Both runs use 2 ranks (pp=1 means dp=2 there, so the balance scope is global, which does not depend on how
    the batch is split): the resumed steps equal the uninterrupted single process."""
    root, prefixes = corpus
    res = spawn(_save_then_resume, 2, prefixes, root, first, then)
    assert res[0] == res[1]
    assert _close(res[0], single["global"]["steps"]), (res[0], single["global"]["steps"])


@pytest.mark.parametrize("over,world,message", [
    ({"pp": 0}, 1, "parallel.pp=0 must be >= 1"),
    ({"pp": 3}, 3, "pp=3 does not divide model.num_layers=4; give the layers per stage with parallel.pp_layout "
                   "(e.g. [2, 1, 1])"),
    ({"pp": 2}, 3, "world size 3 is not divisible by tp*pp=1*2"),
    ({"pp": 2, "ep": 4}, 4, "world size 4 is not divisible by ep*etp*pp=4*1*2"),
    ({"pp": 2, "pp_layout": [4, 0]}, 2, "must give every stage at least one layer"),
    ({"pp": 2, "pp_layout": [2]}, 2, "parallel.pp_layout=[2] must be a list of pp=2 layer counts"),
    ({"pp": 2, "pp_layout": [2, "2"]}, 2, "must be a list of pp=2 layer counts"),
    ({"pp": 4}, 4, "parallel.pp=4 needs at least 4 micro-batches per step"),
    ({"pp": 2, "tie": True}, 2, "parallel.pp > 1 with model.tie_embeddings=true is not supported"),
    ({"pp": 2, "pp_flush": 1}, 2, "parallel.pp_flush=1 must be at least pp=2 and divide the 2 micro-batches"),
    ({"pp": 2, "pp_flush": -1}, 2, "parallel.pp_flush=-1 must be >= 0"),
])
def test_bad_pipeline_layouts_are_refused_in_one_line(corpus, over, world, message):
    from megatron_moe.config import ConfigError

    root, prefixes = corpus
    cfg = _cfg(prefixes, root / "bad")
    cfg.train.micro_batch_size = 2  # 2 micro-batches per step at dp = 1
    cfg.model.tie_embeddings = over.pop("tie", False)
    for k, v in over.items():
        setattr(cfg.parallel, k, v)
    with pytest.raises(ConfigError) as err:
        cfg.validate(world)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_stage_ranges_cover_every_layer_once():
    from megatron_moe.config import ParallelConfig

    assert [list(ParallelConfig(pp=2).stage_range(4, s)) for s in range(2)] == [[0, 1], [2, 3]]
    assert [list(ParallelConfig(pp=3, pp_layout=[1, 3, 2]).stage_range(6, s)) for s in range(3)] == \
        [[0], [1, 2, 3], [4, 5]]


def _nan_step(rank, world, prefixes, root):
    import torch

    from megatron_moe.parallel import init_parallel

    cfg = _cfg(prefixes, root / "nan")
    cfg.parallel.pp = 2
    trainer = build_trainer(prepared(cfg, world), init_parallel(cfg.parallel))
    trainer.train(until=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    model = trainer.model
    if model.is_last:  # the last stage's logits go non-finite: what a diverging step produces
        model.head = lambda x, real=model.head: real(x) * float("nan")
    poisoned = trainer.train_step()
    model.__dict__.pop("head", None)
    unchanged = all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    recovered = trainer.train_step()
    trainer.close()
    return {"skipped": poisoned["skipped"], "unchanged": unchanged, "recovered": not recovered["skipped"],
            "params": len(before)}


@pytest.mark.dist
def test_nan_on_the_last_stage_skips_the_step_on_every_stage(corpus):
    root, prefixes = corpus
    res = spawn(_nan_step, 2, prefixes, root)
    for r in res:
        assert r["skipped"] and r["unchanged"] and r["recovered"] and r["params"] > 0, res
