"""Gradient accumulation does not change the function: with the noisy gate on, 1 process with 4 micro-batches of 1,
1 process with 1 micro-batch of 4 and EP=2 on 2 ranks with 2 micro-batches of 1 train identically: router noise is
keyed by the sample's position in the global batch (model/moe/noise.py), and with moe.balance_scope=global the
balance loss covers the whole global batch (model/moe/balance.py) for any split. The micro scope, by design,
depends on the split; the last test shows that, so the equalities above are not vacuous."""
import pytest

from _dist import spawn
from _train_helpers import prepared, randomize_routers, tiny_config, write_corpus
from megatron_moe.parallel import ParallelState
from megatron_moe.training import build_trainer

STEPS = 3


def _cfg(prefixes, run_dir, micro, scope, aux):
    cfg = tiny_config(prefixes, run_dir, moe=True, train_steps=STEPS, micro_batch_size=micro, global_batch_size=4)
    cfg.moe.router, cfg.moe.noisy_gate, cfg.moe.gate_network = "noisy_topk", True, "linear"
    cfg.moe.balance_scope, cfg.moe.aux_loss_coeff = scope, aux
    return cfg


def _train(cfg, ps, world=1):
    trainer = build_trainer(prepared(cfg, world), ps)
    randomize_routers(trainer)
    hist = trainer.train()
    trainer.close()
    return [(r["loss"], r["grad_norm"], r["aux_loss"]) for r in hist]


def _ep2(rank, world, prefixes, root, scope, aux):
    from megatron_moe.parallel import init_parallel

    cfg = _cfg(prefixes, root / f"ep2_{scope}_{aux}", 1, scope, aux)
    cfg.parallel.ep = 2
    return _train(cfg, init_parallel(prepared(cfg, world).parallel), world)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum")
    return root, write_corpus(root / "data")


def _close(a, b, fields=3, tol=1e-5):
    """(loss, grad norm, aux) of every step equal to `tol`; fields=2 leaves out the aux value."""
    return len(a) == len(b) and all(abs(x - y) <= tol * max(1.0, abs(y)) for ra, rb in zip(a, b, strict=True)
                                    for x, y in zip(ra[:fields], rb[:fields], strict=True))


@pytest.mark.dist
@pytest.mark.parametrize("scope,aux", [("micro", 0.0), ("global", 0.05)], ids=["noise-only", "global-balance"])
def test_any_micro_batch_split_trains_the_same(corpus, scope, aux):
    root, prefixes = corpus
    one_by_four = _train(_cfg(prefixes, root / f"m1_{scope}", 1, scope, aux), ParallelState())
    four = _train(_cfg(prefixes, root / f"m4_{scope}", 4, scope, aux), ParallelState())
    ep2 = spawn(_ep2, 2, prefixes, root, scope, aux)
    assert ep2[0] == ep2[1]
    fields = 3 if scope == "global" else 2  # with the micro scope the logged balance-loss value depends on the split
    assert _close(one_by_four, four, fields), (one_by_four, four)
    assert _close(ep2[0], four, fields), (ep2[0], four)
    if aux:
        assert four[0][2] > 0  # the balance loss is on, and equal in every split


def test_micro_scope_depends_on_the_split(corpus):
    root, prefixes = corpus
    a = _train(_cfg(prefixes, root / "dep1", 1, "micro", 0.05), ParallelState())
    b = _train(_cfg(prefixes, root / "dep4", 4, "micro", 0.05), ParallelState())
    assert abs(a[0][2] - b[0][2]) > 1e-4  # per-micro-batch balance losses differ from the 4-sequence one
