"""Layout equivalence on 2 gloo ranks: TP=2 and ZeRO-1 give the losses of 1 process / plain DP, and their
checkpoints resume in another layout (TP=2 -> TP=1, ZeRO-1 over dp=2 -> 1 process)."""
import pytest
import torch

from _dist import spawn
from _train_helpers import prepared, tiny_config, write_corpus
from megatron_moe.parallel import ParallelState
from megatron_moe.training import build_trainer, run_training

STEPS = 3


def _layouts(rank, world, prefixes, root):
    from megatron_moe.parallel import init_parallel

    out = {}
    for name, over in (("tp2", dict(tp=2)), ("tp2sp", dict(tp=2, sp=True)), ("dp2", dict()),
                       ("zero1", dict(zero1=True))):
        cfg = tiny_config(prefixes, root / name, train_steps=2 * STEPS, save_interval=STEPS)
        cfg.parallel.tp, cfg.parallel.sp = over.get("tp", 1), over.get("sp", False)
        cfg.train.sharding = "zero1" if over.get("zero1") else "none"
        cfg = prepared(cfg, world)
        ps = init_parallel(cfg.parallel)
        trainer = build_trainer(cfg, ps)
        out[name] = [r["loss"] for r in trainer.train(until=STEPS)]
        trainer.save()
        trainer.close()
    return out


def _single(prefixes, run_dir, steps, **over):
    cfg = prepared(tiny_config(prefixes, run_dir, train_steps=2 * STEPS, **over), 1)
    trainer = build_trainer(cfg, ParallelState())
    losses = [r["loss"] for r in trainer.train(until=steps)]
    trainer.close()
    return losses, trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    prefixes = write_corpus(root / "data")
    ref, _ = _single(prefixes, root / "ref", 2 * STEPS)
    res = spawn(_layouts, 2, prefixes, root)
    return root, prefixes, ref, res


@pytest.mark.dist
@pytest.mark.parametrize("layout", ["tp2", "tp2sp"])
def test_tp2_matches_single_process(runs, layout):
    _, _, ref, res = runs
    assert res[0][layout] == res[1][layout]
    for a, b in zip(res[0][layout], ref[:STEPS], strict=True):
        assert abs(a - b) <= 1e-5, (res[0][layout], ref)


@pytest.mark.dist
def test_zero1_matches_plain_dp(runs):
    _, _, ref, res = runs
    for a, b, c in zip(res[0]["zero1"], res[0]["dp2"], ref[:STEPS], strict=True):
        assert abs(a - b) <= 1e-6 and abs(b - c) <= 1e-5, (res[0], ref)


@pytest.mark.dist
@pytest.mark.parametrize("saved", ["tp2", "zero1"])
def test_resume_in_another_layout(runs, saved):
    """Continue a 2-rank checkpoint in 1 process: the last steps match the uninterrupted single-process run."""
    root, prefixes, ref, _ = runs
    cfg = tiny_config(prefixes, root / saved, train_steps=2 * STEPS, save_interval=STEPS)
    hist = run_training(cfg, ParallelState())
    got = [r["loss"] for r in hist]
    assert [r["step"] for r in hist] == list(range(STEPS + 1, 2 * STEPS + 1))
    for a, b in zip(got, ref[STEPS:], strict=True):
        assert abs(a - b) <= 1e-5, (got, ref)
    assert torch.isfinite(torch.tensor(got)).all()
