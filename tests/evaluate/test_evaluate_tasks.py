"""lm-evaluation-harness tasks from our CLI: the in-process path (our model behind the harness's LM interface) and
the harness's own HF backend on the Mixtral export give the same numbers on local tasks of every request type
(multiple choice with few-shot, loglikelihood, rolling loglikelihood over several windows, greedy generation);
the command runs offline, writes the harness's table and JSON, and refuses bad input before loading a model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _moe_helpers import save_state
from _tok_helpers import train_spm
from megatron_moe.analysis.downstream import evaluate_tasks, headline, local_tasks
from megatron_moe.config import Config, ModelConfig, MoEConfig
from megatron_moe.export import export_hf
from megatron_moe.model import build_model, init_weights

ROOT = Path(__file__).resolve().parents[2]
TASKS = "tests/evaluate/tasks"  # the task files name their data relative to the repository root
ALL = ["toy_mc", "toy_cloze", "toy_rolling", "toy_gen"]
MAX_LEN = 64


@pytest.fixture(autouse=True)
def _offline_from_repo_root(monkeypatch, tmp_path_factory):
    """Run from the repository root, with a private HF cache and every proxy pointing at a closed port: nothing
    here may reach the network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are deliberately not set)."""
    monkeypatch.chdir(ROOT)
    for key, value in _offline_env(tmp_path_factory.getbasetemp() / "hf_home").items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    # the harness adds torch's collect_env report to every result (runs pip and friends: seconds); the CLI test
    # below keeps it
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda res: res.update(pretty_env_info="(skipped)"))


def _offline_env(hf_home: Path) -> dict:
    dead = "http://127.0.0.1:9"
    return {"HF_HOME": str(hf_home), "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead,
            "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny MoE checkpoint of ours (non-zero routers, a training capacity factor) carrying a sentencepiece
    tokenizer, and its Mixtral export."""
    root = tmp_path_factory.mktemp("eval")
    model_cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            vocab_size=640, max_seq_len=MAX_LEN)
    # trained with a capacity limit: evaluation is dropless on both paths (the HF model has no capacity)
    moe_cfg = MoEConfig(num_experts=4, top_k=2, use_kernels="off", capacity_factor=1.0)
    model = build_model(Config(model=model_cfg, moe=moe_cfg))
    init_weights(model, seed=3, std=0.08)
    state = model.state_dict()
    g = torch.Generator().manual_seed(4)
    for name, t in state.items():
        if ".router." in name and t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    ck = save_state(state, model_cfg, moe_cfg, root / "ck")
    train_spm(ck / "tokenizer.model", byte_fallback=True)
    return ck, export_hf(ck, root / "hf", "mixtral")


def _samples(res: dict, task: str) -> list:
    return sorted(res["samples"][task], key=lambda s: s["doc_id"])


def test_in_process_and_hf_backend_give_the_same_numbers(model_dirs):
    ck, hf = model_dirs
    kw = dict(include_path=[TASKS], batch_size=4, bootstrap_iters=0, log_samples=True, progress=False)
    ours = evaluate_tasks(ck, ALL, **kw)
    theirs = evaluate_tasks(hf, ALL, **kw)
    assert ours["config"]["model"] == "megatron_moe" and theirs["config"]["model"] == "hf"
    assert ours["n-shot"] == theirs["n-shot"] and ours["n-samples"] == theirs["n-samples"]
    for task in ALL:
        a, b = ours["results"][task], theirs["results"][task]
        assert a.keys() == b.keys()
        for key, value in a.items():
            if key.split(",")[0] in ("acc", "acc_norm", "exact_match"):
                assert value == b[key], (task, key)  # the same answers
            elif isinstance(value, float):
                assert value == pytest.approx(b[key], rel=1e-5), (task, key)
        for sa, sb in zip(_samples(ours, task), _samples(theirs, task), strict=True):
            assert sa["arguments"] == sb["arguments"]  # the same prompts (few-shot examples included)
            if task == "toy_gen":
                assert sa["resps"] == sb["resps"]  # the same generated text
            else:
                for ra, rb in zip(sa["resps"], sb["resps"], strict=True):
                    ll_a = ra[0][0] if isinstance(ra[0], list) else ra[0]
                    ll_b = rb[0][0] if isinstance(rb[0], list) else rb[0]
                    assert ll_a == pytest.approx(ll_b, rel=1e-6, abs=0), task  # fp32: 1.6e-7 seen
                    if isinstance(ra[0], list):
                        assert ra[0][1] == rb[0][1]  # is-greedy
    # the cases are not trivial: choices get different scores, a document takes several windows, text is generated
    mc = [s["filtered_resps"] for s in _samples(ours, "toy_mc")]
    assert all(len({round(r[0], 3) for r in resps}) > 1 for resps in mc)
    assert 0 < ours["results"]["toy_mc"]["acc,none"] < 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    longest = max(len(tok(s["doc"]["text"])["input_ids"]) for s in _samples(ours, "toy_rolling"))
    assert longest > 2 * MAX_LEN
    assert any(s["resps"][0][0].strip() for s in _samples(ours, "toy_gen"))


def test_few_shot_and_limit_follow_the_harness(model_dirs):
    ck, hf = model_dirs
    kw = dict(include_path=[TASKS], num_fewshot=2, limit=5, batch_size=3, bootstrap_iters=0, log_samples=True,
              progress=False)
    ours, theirs = evaluate_tasks(ck, ["toy_mc"], **kw), evaluate_tasks(hf, ["toy_mc"], **kw)
    assert ours["n-shot"]["toy_mc"] == 2 and ours["results"]["toy_mc"]["sample_len"] == 5
    assert ours["results"]["toy_mc"]["acc,none"] == theirs["results"]["toy_mc"]["acc,none"]
    prompt = _samples(ours, "toy_mc")[0]["arguments"][0][0]  # [context, continuation] per choice
    assert prompt.count("Question:") == 3  # two examples from the train split, then the question
    assert [s["arguments"] for s in _samples(ours, "toy_mc")] == [s["arguments"] for s in _samples(theirs, "toy_mc")]
    assert headline(ours, "toy_mc")[0] == "acc" and headline(ours, "toy_rolling") is None
    assert local_tasks(TASKS) == sorted(ALL)


def test_cli_offline_table_and_json(model_dirs, tmp_path):
    ck, _ = model_dirs
    out = tmp_path / "res.json"
    env = {**{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")},
           **_offline_env(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "megatron_moe.cli", "evaluate", "--load", str(ck), "--tasks",
                           "toy_mc,toy_rolling", "--include-path", TASKS, "--limit", "4", "--batch-size", "4",
                           "--bootstrap-iters", "0", "--no-progress", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("|"))
    assert header.replace(" ", "").startswith("|Tasks|Version|Filter|n-shot|Metric|")  # the harness's table
    assert "|toy_mc" in proc.stdout and "acc_norm" in proc.stdout and "word_perplexity" in proc.stdout
    res = json.loads(out.read_text())
    assert res["results"]["toy_mc"]["sample_len"] == 4 and res["config"]["limit"] == 4
    assert not list(tmp_path.glob(".res.json.tmp-*"))
    want = evaluate_tasks(ck, ["toy_mc", "toy_rolling"], include_path=[TASKS], limit=4, batch_size=4,
                          bootstrap_iters=0, progress=False)
    assert res["results"]["toy_mc"]["acc,none"] == want["results"]["toy_mc"]["acc,none"]
    assert res["results"]["toy_rolling"]["bits_per_byte,none"] == pytest.approx(
        want["results"]["toy_rolling"]["bits_per_byte,none"], rel=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "no_such_task", "--include-path", TASKS], "unknown task(s) no_such_task: not found in"),
    (["--tasks", "toy_mc", "--include-path", "{tmp}/missing"], "--include-path {tmp}/missing is not a directory"),
    (["--data", "x", "--num-fewshot", "2"], "--num-fewshot goes with --tasks, not --data"),
    (["--tasks", "toy_mc", "--include-path", TASKS, "--model-args", "trust_remote_code=True"],
     "--model-args are passed to the harness's HF backend"),
    (["--tasks", "toy_mc", "--include-path", TASKS, "--limit", "0"], "--limit=0.0 must be > 0"),
    (["--tasks", "toy_mc", "--include-path", TASKS, "--json", "{tmp}/file/x.json"], "is a file, not a directory"),
])
def test_cli_refuses_bad_input_with_one_line(model_dirs, tmp_path, capsys, argv, message):
    from megatron_moe.cli import run_command

    ck, _ = model_dirs
    (tmp_path / "file").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run_command("evaluate", ["--load", str(ck), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in err[-1], err


def test_tasks_and_data_are_exclusive(model_dirs, capsys):
    from megatron_moe.cli import run_command

    ck, _ = model_dirs
    with pytest.raises(SystemExit) as exc:
        run_command("evaluate", ["--load", str(ck), "--tasks", "toy_mc", "--data", "x"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
