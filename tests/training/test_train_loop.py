"""Single-process training: loss decreases, exact resume, killed saves, NaN guard, metrics, schedule, config."""
import json
import math

import pytest
import torch

from _train_helpers import prepared, tiny_config, write_corpus
from megatron_moe.checkpoint import resolve
from megatron_moe.config import ConfigError, TrainConfig, load_config
from megatron_moe.parallel import ParallelState
from megatron_moe.training import Trainer, TrainingError, build_trainer, lr_at
from megatron_moe.training import checkpointing
from megatron_moe.training.optimizer import TrainOptimizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _trainer(corpus, run_dir, **kw) -> Trainer:
    cfg = prepared(tiny_config(corpus, run_dir, **kw), 1)
    return build_trainer(cfg, ParallelState())


def test_tiny_model_learns(corpus, tmp_path):
    tr = _trainer(corpus, tmp_path / "run", train_steps=30, lr=1e-2, global_batch_size=16, micro_batch_size=8,
                  eval_interval=30)
    hist = tr.train()
    tr.close()
    losses = [r["loss"] for r in hist]
    assert abs(losses[0] - math.log(96)) < 0.15  # starts near uniform over the vocabulary
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.4, losses
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "valid_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "aux_loss", "domain_loss", "domain_weights"):
        assert key in steps[0], key
    assert set(evals[0]["valid_loss"]) == {"alpha", "beta"} and evals[0]["step"] == 30
    assert evals[0]["valid_ppl"]["alpha"] == pytest.approx(math.exp(evals[0]["valid_loss"]["alpha"]))
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert resolve(tmp_path / "run").name == "step_00000030"


def test_exact_resume_is_bitwise(corpus, tmp_path):
    full = _trainer(corpus, tmp_path / "full", train_steps=6)
    want = [r["loss"] for r in full.train()]
    full.close()
    first = _trainer(corpus, tmp_path / "cut", train_steps=6, save_interval=3)
    got = [r["loss"] for r in first.train(until=4)]  # saved at 3, then "killed" during step 4's aftermath
    first.close()
    torch.manual_seed(12345)  # a restarted process has other RNG state; resume must restore it
    second = _trainer(corpus, tmp_path / "cut", train_steps=6, save_interval=3)
    assert second.step == 3
    got = got[:3] + [r["loss"] for r in second.train()]
    second.close()
    assert got == want  # bitwise


def test_killed_save_is_ignored(corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    tr = _trainer(corpus, run, train_steps=6, save_interval=2)
    tr.train(until=2)

    def boom(*a, **k):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(checkpointing, "save_optimizer", boom)
    with pytest.raises(KeyboardInterrupt):
        tr.train(until=4)
    monkeypatch.undo()
    root = run / "checkpoints"
    # the interrupted save removed its temporary directory; `latest` still names the previous checkpoint
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002"]
    assert (root / "latest").read_text().strip() == "step_00000002"
    again = _trainer(corpus, run, train_steps=6, save_interval=2)
    assert again.step == 2
    again.train(until=4)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    assert (root / "latest").read_text().strip() == "step_00000004"


def test_keep_last(corpus, tmp_path):
    tr = _trainer(corpus, tmp_path / "run", train_steps=5, save_interval=1)
    tr.cfg.checkpoint.keep_last = 2
    tr.train()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["latest", "step_00000004", "step_00000005"]


def test_nan_guard_skips_then_aborts(corpus, tmp_path):
    tr = _trainer(corpus, tmp_path / "run", train_steps=10, max_bad_steps=3)
    tr.train(until=1)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    real_loss = tr.model.loss

    def poisoned(factor):
        def loss(*args, **kw):  # the model's loss times nan/inf: what a diverging step produces
            value, per_seq = real_loss(*args, **kw)
            return value * factor, per_seq
        return loss

    tr.model.loss = poisoned(float("nan"))
    rec = tr.train_step()
    tr.model.loss = real_loss
    assert rec["skipped"] and rec["skipped_steps"] == 1 and not math.isfinite(rec["loss"])
    for n, p in tr.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not tr.train_step()["skipped"]  # recovers
    tr.model.loss = poisoned(float("inf"))
    with pytest.raises(TrainingError, match="3 consecutive steps"):
        tr.train()
    assert tr.step == 6
    tr.close()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["skipped"]] == [4, 5, 6]  # logged by the loop (2, 3 ran by hand)
    assert all(r["loss"] is None for r in lines if r["skipped"])  # strict JSON: non-finite values are null


def test_schedule_values():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, train_steps=14, min_lr_ratio=0.1, lr_schedule="cosine")
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg) == 1.0
    assert lr_at(9, cfg) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert lr_at(14, cfg) == pytest.approx(0.1) and lr_at(100, cfg) == pytest.approx(0.1)
    cfg.lr_schedule = "linear"
    assert lr_at(9, cfg) == pytest.approx(0.55) and lr_at(6, cfg) == pytest.approx(1 - 0.9 * 0.2)
    cfg.lr_schedule = "constant"
    assert lr_at(13, cfg) == 1.0
    paper = TrainConfig()
    assert (paper.lr, paper.warmup_steps, paper.min_lr_ratio, paper.adam_beta1, paper.adam_beta2,
            paper.weight_decay, paper.clip_grad) == (2e-4, 100, 0.1, 0.9, 0.95, 0.1, 1.0)


def test_no_decay_on_norms(corpus, tmp_path):
    tr = _trainer(corpus, tmp_path / "run", weight_decay=0.1)
    opt: TrainOptimizer = tr.optimizer
    names = {id(p): n for n, p in tr.model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            is_norm = names[id(p)].endswith("norm.weight")
            assert g["weight_decay"] == (0.0 if is_norm or p.dim() < 2 else 0.1), names[id(p)]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)


@pytest.mark.parametrize("override,msg", [
    ("train.lr_schedule=step", "train.lr_schedule='step' is not one of"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0 must be >= 1"),
    ("train.clip_grad=-1", "train.clip_grad=-1.0 must be >= 0"),
    ("train.global_batch_size=6", "global_batch_size=6 is not divisible by micro_batch_size\\*dp=4\\*1"),
    ("train.precision=fp8", "train.precision='fp8' is not one of"),
    ("train.adam_beta2=1.5", "adam_beta2=1.5 must be in"),
])
def test_config_errors(override, msg):
    cfg = load_config(None, ["model.preset=tiny", "data.seq_len=64", "train.micro_batch_size=4", override])
    with pytest.raises(ConfigError, match=msg):
        cfg.validate(1)


def test_exit_interval_then_rerun_equals_uninterrupted(corpus, tmp_path):
    full = _trainer(corpus, tmp_path / "full", train_steps=6)
    want = [r["loss"] for r in full.train()]
    full.close()
    first = _trainer(corpus, tmp_path / "cut", train_steps=6, exit_interval=4)
    got = [r["loss"] for r in first.train()]
    first.close()
    assert len(got) == 4 and (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    second = _trainer(corpus, tmp_path / "cut", train_steps=6, exit_interval=4)
    assert second.step == 4
    got += [r["loss"] for r in second.train()]
    second.close()
    assert got == want


def test_checkpoints_carry_tokenizer_for_export(corpus, tmp_path):
    tok = tmp_path / "tok" / "tokenizer.model"
    tok.parent.mkdir()
    tok.write_bytes(b"sentencepiece-bytes")
    tr = _trainer(corpus, tmp_path / "run", train_steps=2, exit_interval=1)
    tr.cfg.data.tokenizer = str(tok)
    tr.train()
    tr.close()
    first = resolve(tmp_path / "run")
    assert (first / "tokenizer.model").read_bytes() == b"sentencepiece-bytes"
    tok.unlink()  # the resumed run no longer sees the original: its saves carry the earlier checkpoint's copy
    again = _trainer(corpus, tmp_path / "run", train_steps=2)
    again.train()
    again.close()
    last = resolve(tmp_path / "run")
    assert last.name == "step_00000002" and (last / "tokenizer.model").read_bytes() == b"sentencepiece-bytes"
