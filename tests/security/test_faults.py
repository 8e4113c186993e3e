"""Fault injection: what clusters and users do to a job, and the contract it must keep (docs/cli.md).

Contract: bad input -> one `error:` line, exit 2, no traceback, nothing left behind; an interrupted job leaves
nothing that looks complete (and no temporaries); a signal -> 128 + its number, or, for training, a checkpoint and
exit 75; a run never corrupts another; an output never overwrites an input.

Part 1 runs real processes (signals at chosen points through tests/security/_hooks.py, `ulimit -f`, concurrent
and killed jobs). Part 2 runs commands in-process on files that parse but are not what they claim, sizes that
would allocate without bound, and checkpoints that contradict themselves. Part 3 maps third-party writer failures.
"""
import json
import os
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _data_helpers import write_indexed
from _moe_helpers import make_moe
from _train_helpers import tiny_config, write_corpus

ROOT = Path(__file__).resolve().parents[2]
HOOKS = Path(__file__).with_name("_hooks.py")
V = 96


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_moe.construct.import_dense import import_dense

    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 vocab_size=V, max_position_embeddings=32)).save_pretrained(root / "hf")
    import_dense(root / "hf", root / "dense", progress=False)
    make_moe(root / "moe")
    prefixes = write_corpus(root / "data")
    return {"root": root, "hf": root / "hf", "dense": root / "dense", "moe": root / "moe", "prefixes": prefixes}


def _cfg_file(fx, path: Path, run_dir: Path, **train) -> Path:
    cfg = tiny_config(fx["prefixes"], run_dir, moe=True, **{"log_interval": 1, **train})
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _start(args, *, hook="none", marker=None, seconds=0.0, limit_fsize=None, cwd=ROOT):
    def preexec():
        if limit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    return subprocess.Popen([sys.executable, str(HOOKS), hook, str(marker or "/dev/null"), str(seconds), *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)


def _wait_for(pred, timeout=240.0, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before the fault point: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the fault point")


def _finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang is a failure; leave no process behind
        import psutil

        for c in psutil.Process(proc.pid).children(recursive=True):
            c.kill()
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    return lines[0]


def _temps(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


def _steps(run: Path) -> int:
    f = run / "metrics.jsonl"
    return sum(1 for ln in f.read_text().splitlines() if '"loss"' in ln) if f.is_file() else 0


# ----------------------------------------------------------------------------- 1. signals and concurrency
@pytest.mark.parametrize("sig", ["SIGTERM"])  # SIGUSR1 (slurm's): test_launch_forwards_a_stop_signal_to_its_workers
def test_stop_signal_saves_a_checkpoint_and_the_same_command_resumes(fx, tmp_path, sig):
    run = tmp_path / "run"
    cfg = _cfg_file(fx, tmp_path / "cfg.yaml", run, train_steps=100000)
    p = _start(["train", "--config", str(cfg)])
    _wait_for(lambda: _steps(run) >= 2, proc=p)
    p.send_signal(getattr(signal, sig))
    code, _, err = _finish(p)
    assert code == 75, err[-2000:]
    assert f"stopped: {sig}" in err and "Traceback" not in err, err[-2000:]
    latest = (run / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("_")[1])
    assert step >= 2 and (run / "checkpoints" / latest / "config.json").is_file()
    assert json.loads((run / "checkpoints" / latest / "trainer_state.json").read_text())["step"] == step
    assert _temps(run) == []
    # the same command, with a reachable end, resumes from that step and finishes
    _cfg_file(fx, cfg, run, train_steps=step + 2)
    code, _, err = _finish(_start(["train", "--config", str(cfg)]))
    assert code == 0, err[-2000:]
    assert f"resumed from {run / 'checkpoints' / latest} at step {step}" in err
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{step + 2:08d}"


@pytest.mark.dist
def test_launch_forwards_a_stop_signal_to_its_workers(fx, tmp_path):
    """slurm's `--signal=USR1@T` reaches `megatron-moe launch` (torchrun): the workers finish the step, save
    together, exit 75, and the launcher exits 75 naming the checkpoint."""
    run = tmp_path / "run"
    cfg = _cfg_file(fx, tmp_path / "cfg.yaml", run, train_steps=100000)
    p = subprocess.Popen([sys.executable, "-m", "megatron_moe.cli", "launch", "--standalone", "--nproc-per-node", "2",
                          "-m", "megatron_moe.train", "--config", str(cfg), "parallel.ep=2"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _steps(run) >= 2, proc=p)
    p.send_signal(signal.SIGUSR1)
    code, _, err = _finish(p)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert code == 75 and f"which saved {latest}" in err and "Traceback" not in err, err[-3000:]
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] >= 2 and state["world_size"] == 2 and _temps(run) == []


def test_second_stop_signal_during_the_save_stops_at_once_and_keeps_the_previous_checkpoint(fx, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "saving"
    cfg = _cfg_file(fx, tmp_path / "cfg.yaml", run, train_steps=100000)
    with open(cfg) as f:
        d = yaml.safe_load(f)
    d["checkpoint"]["save_interval"] = 2
    cfg.write_text(yaml.safe_dump(d))
    p = _start(["train", "--config", str(cfg)], hook="train_save", marker=marker, seconds=600)
    _wait_for(marker.exists, proc=p)          # step 2's save is in progress: no complete checkpoint yet
    p.send_signal(signal.SIGTERM)              # first: a graceful stop is requested ...
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)              # ... second: stop now
    code, _, err = _finish(p)
    assert code == 143, err[-2000:]
    assert _one_error(err) == "error: interrupted (SIGTERM)"
    assert not (run / "checkpoints" / "latest").exists() and _temps(run) == []
    assert [p.name for p in (run / "checkpoints").iterdir()] == []


def test_two_jobs_on_one_run_directory_and_a_stale_lock(fx, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "saving"
    cfg = _cfg_file(fx, tmp_path / "cfg.yaml", run, train_steps=100000)
    first = _start(["train", "--config", str(cfg)], hook="train_save", marker=marker, seconds=600)
    _wait_for(lambda: _steps(run) >= 1, proc=first)
    code, _, err = _finish(_start(["train", "--config", str(cfg)]))  # the second job, while the first trains
    line = _one_error(err)
    assert code == 2 and f"run directory {run} is in use by pid {first.pid}" in line, err[-2000:]
    assert first.poll() is None  # the first job is unharmed
    first.send_signal(signal.SIGTERM)  # stop request -> it saves: the hook holds it inside the save ...
    _wait_for(marker.exists, proc=first)
    first.kill()                       # ... and a SIGKILL (a lost node) leaves a half-written checkpoint
    first.wait()
    assert _temps(run) and not (run / "checkpoints" / "latest").exists()
    # the lock died with its holder: the next job takes the directory over and removes the debris
    _cfg_file(fx, cfg, run, train_steps=2)
    code, _, err = _finish(_start(["train", "--config", str(cfg)]))
    assert code == 0, err[-2000:]
    assert "which is gone; taking it over" in err and "left half-written by an earlier job" in err
    assert _temps(run) == [] and (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130), ("SIGHUP", 129)])
def test_convert_interrupted_mid_write_leaves_nothing(fx, tmp_path, sig, code):
    out, marker = tmp_path / "out", tmp_path / "writing"
    p = _start(["convert", "--load", str(fx["hf"]), "--save", str(out), "--num-experts", "4", "--top-k", "2",
                "--no-progress"], hook="add_part", marker=marker, seconds=600)
    _wait_for(marker.exists, proc=p)
    assert _temps(tmp_path)  # the write is in progress
    p.send_signal(getattr(signal, sig))
    rc, _, err = _finish(p)
    assert rc == code and _one_error(err) == f"error: interrupted ({sig})", err[-2000:]
    assert list(p.name for p in tmp_path.iterdir()) == ["writing"]


def test_a_killed_writers_temporary_is_removed_by_the_next_writer(fx, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "writing"
    args = ["--load", str(fx["hf"]), "--save", str(out), "--num-experts", "4", "--top-k", "2", "--no-progress"]
    p = _start(["convert", *args], hook="add_part", marker=marker, seconds=600)
    _wait_for(marker.exists, proc=p)
    p.kill()
    p.wait()
    left = _temps(tmp_path)
    assert left and left[0].startswith(".out.tmp-") and left[0].endswith(f"-{p.pid}")
    code, _, err = _finish(_start(["convert", *args]))
    assert code == 0, err[-2000:]
    assert f"removing {tmp_path / left[0]}, left by a writer that is gone" in err
    assert _temps(tmp_path) == [] and (out / "config.json").is_file()


def test_export_terminated_mid_write_leaves_nothing(fx, tmp_path):
    out, marker = tmp_path / "hf", tmp_path / "writing"
    p = _start(["export", "--load", str(fx["moe"]), "--save", str(out), "--format", "mixtral"], hook="hf_add",
               marker=marker, seconds=600)
    _wait_for(marker.exists, proc=p)
    p.send_signal(signal.SIGTERM)
    rc, _, err = _finish(p)
    assert rc == 143 and _one_error(err) == "error: interrupted (SIGTERM)", err[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["writing"]


def test_reshard_interrupted_stops_its_ranks_and_leaves_nothing(fx, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "writing"
    p = _start(["reshard", "--load", str(fx["moe"]), "--save", str(out), "--ep", "2"], hook="reshard_rank",
               marker=marker, seconds=600)
    _wait_for(marker.exists, proc=p)  # a rank is inside its save
    ranks = psutil_children(p.pid)    # collected now: once the parent is gone, orphans would not be its children
    assert ranks
    p.send_signal(signal.SIGINT)      # Ctrl-C reaches the parent (the ranks ignore it: the parent stops them)
    rc, _, err = _finish(p)
    assert rc == 130 and _one_error(err) == "error: interrupted (SIGINT)", err[-3000:]
    assert [q.name for q in tmp_path.iterdir()] == ["writing"]
    assert not [c for c in ranks if c.is_running() and c.status() != "zombie"]


@pytest.fixture(scope="module")
def corpus(fx):
    from megatron_moe.data.spm_train import train_sentencepiece

    root = fx["root"] / "corpus"
    root.mkdir()
    lines = [json.dumps({"text": f"alpha beta gamma delta {i} " * (1 + i % 7)}) for i in range(3000)]
    (root / "in.jsonl").write_text("\n".join(lines) + "\n")
    tok = train_sentencepiece([f"alpha beta gamma delta {i}" for i in range(300)], root / "tok.model", vocab_size=60)
    return root / "in.jsonl", tok


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_preprocess_with_workers_interrupted_stops_its_pool_and_leaves_nothing(corpus, tmp_path, sig, code):
    src, tok = corpus
    marker = tmp_path / "writing"
    p = _start(["preprocess", "--input", str(src), "--tokenizer", str(tok), "--save", str(tmp_path / "ds"),
                "--workers", "2", "--no-progress"], hook="preprocess_write", marker=marker, seconds=600)
    _wait_for(marker.exists, proc=p)
    assert _temps(tmp_path)
    children = psutil_children(p.pid)
    assert len(children) >= 2  # the pool's workers are running
    p.send_signal(getattr(signal, sig))
    rc, _, err = _finish(p, timeout=120)  # no hang
    assert rc == code and _one_error(err) == f"error: interrupted ({sig})", err[-3000:]
    assert [q.name for q in tmp_path.iterdir()] == ["writing"]
    assert not [c for c in children if c.is_running() and c.status() != "zombie"]


def psutil_children(pid):
    import psutil

    return psutil.Process(pid).children(recursive=True)


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_during_start_up_is_one_line(tmp_path, sig, code):
    marker = tmp_path / "starting"
    p = _start(["inspect", str(tmp_path)], hook="start_up", marker=marker, seconds=600)
    _wait_for(marker.exists, proc=p)  # in start-up: the command's module and torch are not imported yet
    p.send_signal(getattr(signal, sig))
    rc, _, err = _finish(p)
    assert rc == code and _one_error(err) == f"error: interrupted ({sig})", err


def test_a_signal_during_shutdown_keeps_the_exit_code():
    """A Ctrl-C that arrives after the command decided its exit code (atexit handlers, thread joins) ends the
    process with that code, not with a death by SIGINT (Python's default for an unhandled interrupt)."""
    code = ("import atexit, os, signal, time\n"
            "from megatron_moe.signals import exit_with\n"
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))\n"
            "exit_with(2)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr)


# ------------------------------------------------------------------------------ 2. writers that fail
LIMIT = 24 << 10  # RLIMIT_FSIZE: larger than every small file (configs, metrics), smaller than a weight file


@pytest.mark.parametrize("case", ["convert", "export", "train", "preprocess"])
def test_file_size_limit_inside_a_third_party_writer_is_one_line(fx, corpus, tmp_path, case):
    out = tmp_path / "out"
    if case == "preprocess":  # our own indexed writer, fed by a worker pool
        args = ["preprocess", "--input", str(corpus[0]), "--tokenizer", str(corpus[1]), "--save", str(out),
                "--workers", "2", "--no-progress"]
    elif case == "convert":  # DCP (CheckpointException) writes the MoE checkpoint
        args = ["convert", "--load", str(fx["hf"]), "--save", str(out), "--num-experts", "4", "--top-k", "2",
                "--no-progress"]
    elif case == "export":  # safetensors (SafetensorError)
        args = ["export", "--load", str(fx["moe"]), "--save", str(out), "--format", "mixtral"]
    else:  # the trainer's collective checkpoint save
        out = tmp_path / "run"
        args = ["train", "--config", str(_cfg_file(fx, tmp_path / "cfg.yaml", out, train_steps=1))]
    rc, _, err = _finish(_start(args, limit_fsize=LIMIT))
    line = _one_error(err)
    assert rc == 2 and "cannot write" in line and "File too large" in line, err[-3000:]
    assert _temps(tmp_path) == []
    if case == "train":
        assert not (out / "checkpoints" / "latest").exists()
        assert list((out / "checkpoints").iterdir()) == []
    else:
        assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- 3. files, sizes, consistency (in-process)
def _deep_json(n: int) -> str:
    return '{"a": ' + "[" * n + "]" * n + "}"


def _hf_variant(fx, root: Path, name: str, edit=None, raw: bytes = None) -> Path:
    import shutil

    d = root / name
    shutil.copytree(fx["hf"], d)
    if raw is not None:
        (d / "config.json").write_bytes(raw)
    else:
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    return d


def _ours_variant(fx, root: Path, name: str, src: str = "moe", config=None, index_raw=None, state_raw=None):
    import shutil

    d = root / name
    shutil.copytree(fx[src], d)
    if config is not None:
        raw = json.loads((d / "config.json").read_text())
        config(raw)
        (d / "config.json").write_text(json.dumps(raw))
    if index_raw is not None:
        (d / "model" / "index.json").write_text(index_raw)
    return d


def _edit(**kw):
    return lambda cfg: cfg.update(kw)


def _moe_edit(**kw):
    return lambda raw: raw["moe"].update(kw)


@pytest.fixture(scope="module")
def cases(fx):
    """name -> (command, argv, expected fragment of the error line, exit code); files are built here."""
    root = fx["root"] / "cases"
    root.mkdir()
    deep = _hf_variant(fx, root, "hf_deep", raw=_deep_json(100_000).encode())
    heads0 = _hf_variant(fx, root, "hf_heads0", _edit(num_attention_heads=0, num_key_value_heads=0, head_dim=None))
    huge = _hf_variant(fx, root, "hf_layers", _edit(num_hidden_layers=10_000_000))
    cfg_bytes = (fx["hf"] / "config.json").read_bytes()
    badutf = _hf_variant(fx, root, "hf_utf8", raw=cfg_bytes[:-2] + b' "x": "\xff\xfe"}')
    inf = _hf_variant(fx, root, "hf_inf", raw=cfg_bytes.replace(b'"rope_theta": 10000.0', b'"rope_theta": 1e400'))
    nan = _hf_variant(fx, root, "hf_nan", raw=cfg_bytes.replace(b'"rope_theta": 10000.0', b'"rope_theta": NaN'))
    bigint = _hf_variant(fx, root, "hf_bigint", raw=cfg_bytes.replace(b'"vocab_size": 96', b'"vocab_size": 1'
                                                                      + b"0" * 5000))
    assert b"1e400" in (inf / "config.json").read_bytes() and b"NaN" in (nan / "config.json").read_bytes()
    listcfg = _ours_variant(fx, root, "ours_list")
    (listcfg / "config.json").write_text("[1, 2, 3]")
    deepidx = _ours_variant(fx, root, "ours_deep_index", index_raw=_deep_json(100_000))
    lying = _ours_variant(fx, root, "ours_lying", config=_moe_edit(num_experts=8))      # the tensors hold 4
    layers = _ours_variant(fx, root, "ours_layers", config=lambda r: r["model"].update(num_layers=10_000_000))
    nanck = _ours_variant(fx, root, "dense_nan", src="dense")
    from megatron_moe.checkpoint import read_tensors
    from megatron_moe.checkpoint.store import CheckpointWriter

    tensors = read_tensors(nanck)
    tensors["layers.0.mlp.w1.weight"][0, 0] = float("nan")
    import shutil

    shutil.rmtree(nanck)
    with CheckpointWriter(nanck, json.loads((fx["dense"] / "config.json").read_text())) as w:
        from megatron_moe.checkpoint import part_of

        parts = {}
        for n, t in tensors.items():
            parts.setdefault(part_of(n), {})[n] = t
        for part, ts in parts.items():
            w.add_part(part, ts)

    # training configs
    def train_cfg(name, edit=None, text=None, run_name=None):
        f = root / f"{name}.yaml"
        cfg = tiny_config(fx["prefixes"], root / (run_name or f"run_{name}"), moe=True, train_steps=1).to_dict()
        if edit:
            edit(cfg)
        f.write_text(text if text is not None else yaml.safe_dump(cfg))
        return f

    deep_yaml = train_cfg("deep", text="train:\n  lr: " + "[" * 100_000 + "]" * 100_000 + "\n")
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb_cfg = tiny_config(fx["prefixes"], root / "run_bomb", moe=True, train_steps=1).to_dict()
    bomb_cfg["model"]["eos_token_id"] = "BOMB"
    bomb = train_cfg("bomb", text="\n".join(lines) + "\n" + yaml.safe_dump(bomb_cfg).replace("BOMB", "*a8"))
    inf_yaml = train_cfg("inf", lambda c: c["train"].update(lr=".inf"), run_name="run_inf")
    (root / "inf.yaml").write_text((root / "inf.yaml").read_text().replace("'.inf'", ".inf"))
    neg_prefix = write_indexed(root / "neg_text_document", [[1, 5, -3, 7] * 10] * 4, dtype=np.int32)
    neg = train_cfg("neg", lambda c: c["data"].update(domains=[{"name": "a", "prefixes": [str(neg_prefix)]}]))
    big_batch = train_cfg("bigbatch", lambda c: c["train"].update(global_batch_size=10_000_000_000))
    wide = train_cfg("wide", lambda c: c["model"].update(hidden_size=1 << 20, intermediate_size=1 << 22))
    # a resume whose trainer_state.json is valid JSON of the wrong type
    resume_run = root / "run_badstate"
    (resume_run / "checkpoints").mkdir(parents=True)
    shutil.copytree(fx["moe"], resume_run / "checkpoints" / "step_00000003")
    (resume_run / "checkpoints" / "step_00000003" / "trainer_state.json").write_text("[]")
    (resume_run / "checkpoints" / "latest").write_text("step_00000003")
    badstate = train_cfg("badstate", lambda c: (c.pop("model"), c.pop("moe")), run_name="run_badstate")
    # the tiny_cpu example: a preset plus moe keys, loading a converted checkpoint of another shape
    preset_cfg = tiny_config(fx["prefixes"], root / "run_preset", moe=True, train_steps=1).to_dict()
    preset_cfg["model"] = {"preset": "tiny"}
    preset_cfg["moe"] = {"num_experts": 4, "top_k": 2}
    preset_cfg["checkpoint"]["load"] = str(fx["moe"])
    preset = root / "preset.yaml"
    preset.write_text(yaml.safe_dump(preset_cfg))
    preset_cfg["model"]["intermediate_size"] = 192
    preset_explicit = root / "preset_explicit.yaml"
    preset_explicit.write_text(yaml.safe_dump(preset_cfg))

    T = ["--check", "--config"]
    return {
        # files that parse but are not what we expect
        "deep-json": ("import", ["--load", deep, "--save", "{out}"], "nested more than 64 levels", 2),
        "deep-yaml": ("train", T + [deep_yaml], "nested more than 64 levels", 2),
        "deep-index": ("inspect", ["--load", deepidx], "nested more than 64 levels", 2),
        "wrong-type": ("export", ["--load", listcfg, "--save", "{out}", "--format", "mixtral"],
                       "expected an object (mapping) at top level, got list", 2),
        "wrong-type-state": ("train", T + [badstate], "expected an object (mapping) at top level, got list", 2),
        "not-utf8": ("import", ["--load", badutf, "--save", "{out}"], "not UTF-8 text (byte", 2),
        "zero-heads": ("import", ["--load", heads0, "--save", "{out}"], "model.num_heads=0 must be > 0", 2),
        "inf": ("import", ["--load", inf, "--save", "{out}"], "non-finite number inf", 2),
        "nan": ("import", ["--load", nan, "--save", "{out}"], "invalid JSON (non-finite number NaN)", 2),
        "bigint": ("import", ["--load", bigint, "--save", "{out}"], "invalid JSON (Exceeds the limit", 2),
        "inf-yaml": ("train", T + [inf_yaml], "non-finite number inf", 2),
        "nan-override": ("train", T + [big_batch, "train.global_batch_size=4", "train.lr=nan"],
                         "train.lr='nan' must be a finite number", 2),
        # sizes bounded before anything is allocated
        "layers-hf": ("import", ["--load", huge, "--save", "{out}"],
                      "the config says num_hidden_layers=10000000 but the files hold tensors for 2 layers", 2),
        "layers-ours": ("evaluate", ["--load", layers, "--data", fx["prefixes"]["alpha"], "--seq-len", "8"],
                        "the config says model.num_layers=10000000 but the files hold tensors for 2 layers", 2),
        "alias-bomb": ("train", T + [bomb], "YAML aliases expand to more than 1000000 values", 2),
        "batch": ("train", T + [big_batch], "train.global_batch_size=10000000000 x data.seq_len=16 holds", 2),
        "plan": ("train", T + [wide], "this config needs about", 2),
        # consistency at every read; outputs never overwrite inputs
        "lying-export": ("export", ["--load", lying, "--save", "{out}", "--format", "mixtral"],
                         "but config.json implies", 2),
        "lying-inspect": ("inspect", ["--load", lying], "but config.json implies", 2),
        "lying-evaluate": ("evaluate", ["--load", lying, "--data", fx["prefixes"]["alpha"], "--seq-len", "8"],
                           "but config.json implies", 2),
        "nan-verify": ("convert", ["--load", nanck, "--save", "{out}", "--num-experts", "4", "--top-k", "2",
                                   "--verify", "--no-progress"], "verify failed: max |logit delta| = nan", 1),
        "json-over-input": ("inspect", ["--load", fx["moe"], "--json", fx["moe"] / "config.json"],
                            f"--json {fx['moe'] / 'config.json'} would overwrite the input {fx['moe']}", 2),
        "save-inside-input": ("export", ["--load", fx["moe"], "--save", fx["moe"] / "hf", "--format", "mixtral"],
                              f"--save {fx['moe'] / 'hf'} would overwrite the input {fx['moe']}", 2),
        "negative-ids": ("train", T + [neg], "holds token id -3; token ids must be >= 0", 2),
        # the preset regression: a preset does not conflict with the checkpoint; what the user wrote does
        "preset": ("train", T + [preset], None, 0),
        "preset-explicit": ("train", T + [preset_explicit],
                            f"model.intermediate_size=192 (set in {preset_explicit}) differs from 64", 2),
    }


CASE_NAMES = ["deep-json", "deep-yaml", "deep-index", "wrong-type", "wrong-type-state", "not-utf8", "zero-heads",
              "inf", "nan", "bigint", "inf-yaml", "nan-override", "layers-hf", "layers-ours", "alias-bomb",
              "batch", "plan", "lying-export", "lying-inspect", "lying-evaluate", "nan-verify", "json-over-input",
              "save-inside-input", "negative-ids", "preset", "preset-explicit"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_files_sizes_and_contradictions(fx, cases, tmp_path, capsys, name):
    from megatron_moe.cli import run_command

    command, argv, fragment, want = cases[name]
    out = tmp_path / "out"
    argv = [str(a).replace("{out}", str(out)) for a in argv]
    before = {p: p.stat().st_mtime_ns for p in fx["moe"].rglob("*")}
    t0 = time.time()
    code = run_command(command, argv)
    err = capsys.readouterr().err
    assert code == want, err[-3000:]
    assert time.time() - t0 < 60  # refused before any unbounded work
    if fragment is not None:
        assert fragment in _one_error(err), err[-3000:]
    if name != "nan-verify":  # a failed --verify keeps the converted model to look at (exit 1, not bad input)
        assert not out.exists() and list(tmp_path.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in fx["moe"].rglob("*")} == before  # inputs untouched


def test_every_case_is_run():
    assert len(CASE_NAMES) == len(set(CASE_NAMES)) >= 26


# -------------------------------------------------------------------- 4. third-party writer failures
def test_interrupt_wrapped_by_dcp_is_an_interrupt_and_the_temporary_goes(tmp_path, monkeypatch, capsys):
    from torch.distributed.checkpoint import FileSystemWriter

    from megatron_moe.checkpoint.store import CheckpointWriter
    from megatron_moe.cli.common import guarded

    def boom(self, plan, planner):
        raise KeyboardInterrupt  # Ctrl-C inside DCP's write: DCP wraps it in CheckpointException

    monkeypatch.setattr(FileSystemWriter, "write_data", boom)

    def work():
        with CheckpointWriter(tmp_path / "ck", {"format": "x"}) as w:
            w.add_part("embed", {"embed.weight": torch.zeros(4, 4)})

    assert guarded(work) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted (SIGINT)"
    assert list(tmp_path.iterdir()) == []


def test_disk_full_in_safetensors_and_in_close_are_one_line(tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    from megatron_moe.atomic import OutputError, StagedWriter
    from megatron_moe.export import HFWriter

    def full(*a, **k):  # the wording of safetensors 0.8 (the older one, "IoError(Os { code: 28 ...", maps too)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'hf'}: No space left on device"):
        with HFWriter(tmp_path / "hf") as w:
            w.add("x", torch.zeros(2))
    assert list(tmp_path.iterdir()) == []

    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # the data was buffered; the flush at commit fails
    with pytest.raises(OutputError, match="No space left on device"):
        with StagedWriter(tmp_path / "d") as w:
            (w.tmp / "f").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_a_bug_inside_a_writer_keeps_its_traceback(tmp_path):
    from megatron_moe.atomic import StagedWriter

    with pytest.raises(ZeroDivisionError):
        with StagedWriter(tmp_path / "d"):
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_recognised_by_host_and_pid(tmp_path):
    from megatron_moe.atomic import _HOST, stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "out"
    names = [f".out.tmp-{_HOST}-{dead.pid}", f".out.tmp-{_HOST}-{os.getpid()}", f".out.tmp-otherhost-{dead.pid}",
             f".out.old-{_HOST}-{dead.pid}", f".out.tmp-{dead.pid}", f".outer.tmp-{_HOST}-{dead.pid}"]
    for n in names:
        (tmp_path / n).mkdir()
    got = [p.name for p in stale_temps(final)]
    assert got == sorted([names[0], names[3], names[4]])


def test_parallel_runs_share_nothing(fx, tmp_path):
    """Two convert jobs to two outputs at once both succeed (temporary names do not collide)."""
    def run(i):
        return _finish(_start(["convert", "--load", str(fx["hf"]), "--save", str(tmp_path / f"o{i}"),
                               "--num-experts", "4", "--top-k", "2", "--no-progress"]))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(2)))
    assert [r[0] for r in results] == [0, 0], [r[2][-1500:] for r in results]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o0", "o1"]
