"""Bad input, every CLI, as a user types it: exit code 2, exactly one `error:` line (no traceback), and no output
left behind (neither the asked-for path nor a temporary next to it).

Each case is (command, arguments, fragment of the error line). `{x}` in an argument is a path from the fixtures:
hf (a tiny HF LLaMA), dense / moe (our checkpoints), cfg (a training YAML), data (a dataset prefix), tok (a
sentencepiece model), jsonl (a text file), file (a plain file), out (the output path that must not appear).
"""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from _cli import run_cli
from _data_helpers import write_indexed
from _moe_helpers import make_moe
from _train_helpers import tiny_config, write_corpus

V = 96  # vocabulary of the fixtures' models and data


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_moe.construct.import_dense import import_dense
    from megatron_moe.data.spm_train import train_sentencepiece

    root = tmp_path_factory.mktemp("badinput")
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=V, max_position_embeddings=32)).save_pretrained(root / "hf")
    import_dense(root / "hf", root / "dense", progress=False)
    make_moe(root / "moe")
    prefixes = write_corpus(root / "data")
    big = write_indexed(root / "big_text_document", [[1, 5, 200, 7] * 10] * 4)       # token 200 >= V
    bad = root / "corrupt_text_document"
    shutil.copy(prefixes["alpha"] + ".bin", f"{bad}.bin")
    Path(f"{bad}.idx").write_bytes(Path(prefixes["alpha"] + ".idx").read_bytes()[:-8])  # truncated index
    mixed = root / "mixed_text_document"
    shutil.copy(prefixes["alpha"] + ".idx", f"{mixed}.idx")
    shutil.copy(prefixes["beta"] + ".bin", f"{mixed}.bin")                           # .bin of another run
    cfg = tiny_config(prefixes, root / "run", moe=True, train_steps=1).to_dict()
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (root / "broken.yaml").write_text("train: [unclosed\n")
    tok = train_sentencepiece([f"alpha beta gamma {i}" for i in range(200)], root / "tok.model", vocab_size=40)
    (root / "in.jsonl").write_text('{"text": "alpha beta"}\n{"text": oops}\n')
    (root / "file").write_text("x")
    (root / "hf_badjson").mkdir()
    (root / "hf_badjson" / "config.json").write_text("{")
    (root / "hf_gpt2").mkdir()
    (root / "hf_gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    heads = json.loads((root / "hf" / "config.json").read_text())
    (root / "hf_heads").mkdir()
    heads.update(num_attention_heads=3, num_key_value_heads=3)
    heads.pop("head_dim", None)  # transformers 5 writes it; without it the head width is hidden / heads
    (root / "hf_heads" / "config.json").write_text(json.dumps(heads))
    shutil.copy(root / "hf" / "model.safetensors", root / "hf_heads")
    (root / "hf_trunc").mkdir()
    shutil.copy(root / "hf" / "config.json", root / "hf_trunc")
    (root / "hf_trunc" / "model.safetensors").write_bytes((root / "hf" / "model.safetensors").read_bytes()[:100])
    (root / "exists").mkdir()
    (root / "lm_llama").mkdir()
    shutil.copy(root / "hf" / "config.json", root / "lm_llama")
    (root / "run_latest_broken" / "checkpoints").mkdir(parents=True)
    (root / "run_latest_broken" / "checkpoints" / "latest").write_text("step_00000009")
    return {"root": root, "hf": root / "hf", "dense": root / "dense", "moe": root / "moe", "cfg": root / "cfg.yaml",
            "data": prefixes["alpha"], "big": big, "bad": str(bad), "mixed": str(mixed), "tok": str(tok),
            "jsonl": root / "in.jsonl", "file": root / "file", "exists": root / "exists"}


def _domains(prefix):
    """A data.domains override (braces doubled: the case arguments go through str.format)."""
    return "data.domains=[{{name: a, prefixes: [" + prefix + "]}}]"


T = ("-m", "megatron_moe.train", "--config", "{cfg}", "logging.run_dir={out}")


def _at_world(n: int) -> tuple:
    """`train --check --world-size n`: the start-up checks of an n-rank job, in one process."""
    return ("-m", "megatron_moe.train", "--check", "--world-size", str(n), "--config", "{cfg}", "logging.run_dir={out}")
CASES = [
    # import
    ("import", ["--load", "{root}/nope", "--save", "{out}"], "no such checkpoint directory"),
    ("import", ["--load", "{file}", "--save", "{out}"], "expected a checkpoint directory"),
    ("import", ["--load", "{exists}", "--save", "{out}"], "neither an HF checkpoint"),
    ("import", ["--load", "{root}/hf_badjson", "--save", "{out}"], "invalid JSON"),
    ("import", ["--load", "{root}/hf_gpt2", "--save", "{out}"], "unsupported architecture"),
    ("import", ["--load", "{root}/hf_heads", "--save", "{out}"], "not divisible by model.num_heads=3"),
    ("import", ["--load", "{root}/hf_trunc", "--save", "{out}"], "truncated or corrupt"),
    ("import", ["--load", "{hf}", "--save", "{exists}"], "already exists"),
    ("import", ["--load", "{hf}", "--save", "{file}/sub"], "is a file, not a directory"),
    ("import", ["--load", "{hf}", "--save", "/proc/megatron_moe_out"], "not writable"),
    ("import", ["--load", "{hf}", "--save", "{out}", "--dtype", "fp8"], "invalid dtype"),
    ("import", ["--load", "{hf}"], "required: --save"),
    # import-llama-moe
    ("import-llama-moe", ["--load", "{root}/lm_llama", "--save", "{out}"], "expected 'llama_moe'"),
    # convert
    ("convert", ["--load", "{hf}", "--save", "{out}", "--num-experts", "5", "--top-k", "1"], "not divisible by num_experts=5"),
    ("convert", ["--load", "{hf}", "--save", "{out}", "--num-experts", "4", "--top-k", "6"], "top_k=6"),
    ("convert", ["--load", "{hf}", "--save", "{out}", "--method", "magic"], "invalid choice: 'magic'"),
    ("convert", ["--load", "{hf}", "--save", "{out}", "--num-experts", "4", "--top-k", "2", "--method", "gradient"],
     "needs calibration data"),
    ("convert", ["--load", "{hf}", "--save", "{out}", "--num-experts", "4", "--top-k", "2", "--ep", "3"],
     "ep=3 does not divide num_experts=4"),
    ("convert", ["--load", "{hf}", "--save", "{out}", "--num-experts", "0"], "num_experts=0 must be >= 1"),
    ("convert", ["--load", "{hf}", "--save", "{exists}", "--num-experts", "4", "--top-k", "2"], "already exists"),
    ("convert", ["--load", "{hf}", "--save", "{out}", "--num-experts", "4", "--top-k", "2", "--method", "co-activation",
                 "--calib-data", "{root}/missing.jsonl"], "does not exist"),
    # preprocess
    ("preprocess", ["--input", "{root}/missing.jsonl", "--tokenizer", "{tok}", "--save", "{out}"], "does not exist"),
    ("preprocess", ["--input", "{jsonl}", "--tokenizer", "{root}/missing.model", "--save", "{out}"],
     "tokenizer {root}/missing.model does not exist"),
    ("preprocess", ["--input", "{jsonl}", "--tokenizer", "{tok}", "--save", "{out}"], "malformed JSON"),
    ("preprocess", ["--input", "{jsonl}", "--tokenizer", "{tok}", "--save", "{data}", "--skip-bad-lines"],
     "already exists"),
    ("preprocess", ["--input", "{jsonl}", "--tokenizer", "{tok}", "--save", "{out}", "--workers", "0"],
     "--workers=0 must be > 0"),
    ("preprocess", ["--input", "{jsonl}", "--tokenizer", "{tok}", "--save", "{file}/ds", "--skip-bad-lines"],
     "is a file, not a directory"),
    # train-tokenizer
    ("train-tokenizer", ["--input", "{root}/missing.txt", "--save", "{out}"], "does not exist"),
    ("train-tokenizer", ["--input", "{jsonl}", "--save", "{out}", "--vocab-size", "0"], "--vocab-size=0 must be > 0"),
    # train (python -m megatron_moe.train ...)
    ("train", ["-m", "megatron_moe.train", "--config", "{root}/missing.yaml"], "config file"),
    ("train", ["-m", "megatron_moe.train", "--config", "{root}/broken.yaml"], "not valid YAML"),
    ("train", [*T, "train.learning_rate=1"], "unknown config key config.train.learning_rate"),
    ("train", [*T, "parallel.etp=-1"], "parallel.etp=-1 must be >= 1"),
    ("train", [*T, "parallel.etp=0"], "parallel.etp=0 must be >= 1"),
    ("train", [*T, "moe.num_experts=-4"], "moe.num_experts=-4 must be >= 0"),
    ("train", [*T, "parallel.pp=2"], "world size 1 is not divisible by tp*pp=1*2"),
    ("train", [*_at_world(6), "parallel.pp=3"], "pp=3 exceeds model.num_layers=2"),
    ("train", [*_at_world(4), "parallel.pp=2", "parallel.pp_layout=[2,1]"],
     "must give every stage at least one layer and sum to model.num_layers=2 (it sums to 3)"),
    ("train", [*T, "checkpoint.save_interval=-1"], "checkpoint.save_interval=-1 must be >= 0"),
    ("train", [*T, "checkpoint.keep_last=-2"], "checkpoint.keep_last=-2 must be >= 0"),
    ("train", [*T, _domains("{root}/nothing_text_document")], "does not exist"),
    ("train", [*T, _domains("{bad}")], "truncated or corrupt"),
    ("train", [*T, _domains("{mixed}")], "are not a pair"),
    ("train", [*T, _domains("{big}")], "token id 200, outside the model vocabulary"),
    ("train", ["-m", "megatron_moe.train", "--config", "{cfg}", "logging.run_dir=/proc/megatron_moe_run"], "cannot be created"),
    ("train", ["-m", "megatron_moe.train", "--config", "{cfg}", "logging.run_dir={file}"], "is a file, not a directory"),
    ("train", [*T, "checkpoint.load={root}/nope"], "no such checkpoint"),
    ("train", [*T, "checkpoint.load={moe}", "moe.num_experts=8"], "moe.num_experts=8 (set in the command line) differs from 4"),
    ("train", [*T, "checkpoint.load={moe}", "model.hidden_size=64"], "model.hidden_size=64 (set in the command line) differs from 32"),
    ("train", ["-m", "megatron_moe.train", "--config", "{cfg}", "logging.run_dir={root}/run_latest_broken"],
     "points at step_00000009"),
    # evaluate
    ("evaluate", ["--load", "{moe}", "--data", "{root}/nothing"], "does not exist"),
    ("evaluate", ["--load", "{moe}", "--data", "{big}", "--seq-len", "8"], "outside the model vocabulary"),
    ("evaluate", ["--load", "{moe}", "--data", "{data}", "--seq-len", "999"], "exceeds the model's max_seq_len"),
    ("evaluate", ["--load", "{moe}", "--data", "{data}", "--batch-size", "0"], "--batch-size=0 must be > 0"),
    # inspect
    ("inspect", ["{exists}"], "not a megatron_moe checkpoint"),
    ("inspect", ["--load", "{root}/run_latest_broken"], "points at step_00000009"),
    # export
    ("export", ["--load", "{dense}", "--save", "{out}", "--format", "mixtral"], "needs an MoE checkpoint"),
    ("export", ["--load", "{moe}", "--save", "{exists}", "--format", "mixtral"], "already exists"),
    ("export", ["--load", "{moe}", "--save", "{out}", "--format", "mixtral", "--max-shard-gb", "0"],
     "--max-shard-gb=0.0 must be > 0"),
    ("export", ["--load", "{moe}", "--save", "{out}", "--format", "gguf"], "invalid choice: 'gguf'"),
    # reshard
    ("reshard", ["--load", "{moe}", "--save", "{out}", "--ep", "3"], "ep=3 does not divide num_experts=4"),
    ("reshard", ["--load", "{moe}", "--save", "{exists}"], "already exists"),
    # plot
    ("plot", ["--load", "{dense}", "--data", "{data}", "--save", "{out}"], "dense model"),
    ("plot", ["--load", "{moe}", "--data", "{data}", "--save", "{out}", "--metrics", "{root}/none.jsonl"],
     "no such metrics file"),
    # plan
    ("plan", ["--config", "{cfg}", "--gpus", "0"], "--gpus=0"),
    ("plan", ["--config", "{root}/missing.yaml", "--gpus", "8"], "does not exist"),
    # check-layout
    ("check-layout", ["--tp", "2"], "required: --load"),
]
SCRIPT = {"import": "tools/import_llama.py", "import-llama-moe": "tools/import_llama_moe.py",
          "convert": "tools/convert_llama_to_moe.py", "preprocess": "tools/preprocess_data.py",
          "train-tokenizer": "tools/train_tokenizer.py", "evaluate": "tools/evaluate.py",
          "inspect": "tools/inspect_checkpoint.py", "export": "tools/export_hf.py",
          "reshard": "tools/reshard_checkpoint.py", "plot": "tools/plot_routing.py", "plan": "tools/plan_memory.py",
          "check-layout": "tools/check_layout.py"}


def _fill(arg: str, fx: dict, out: Path) -> str:
    return arg.format(out=out, **{k: v for k, v in fx.items()})


def _argv(case, fx, out):
    command, args, _ = case
    argv = [_fill(a, fx, out) for a in args]
    return argv if command == "train" else [SCRIPT[command], *argv]


@pytest.fixture(scope="module")
def results(fx, tmp_path_factory):
    """Run every case once, two at a time (forked from processes that imported torch once: tests/_cli.py)."""
    from concurrent.futures import ThreadPoolExecutor

    def run(i):
        out_dir = tmp_path_factory.mktemp(f"case{i:02d}")
        out = out_dir / "out"
        r = run_cli(*_argv(CASES[i], fx, out), timeout=180)
        return r, out_dir, out

    before = sorted(p.name for p in fx["root"].iterdir())
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(run, range(len(CASES))))
    return done, before


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{i:02d}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input(fx, results, i):
    (r, out_dir, out), before = results[0][i], results[1]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert _fill(CASES[i][2], fx, out) in errors[0], errors[0]
    assert not out.exists() and list(out_dir.iterdir()) == [], "output left behind"
    assert sorted(p.name for p in fx["root"].iterdir()) == before, "a file appeared next to the inputs"


def test_table_covers_every_cli():
    from megatron_moe.cli import COMMANDS

    covered = {c for c, _, _ in CASES}
    assert len(CASES) >= 40
    assert set(COMMANDS) - covered <= {"launch"}, set(COMMANDS) - covered  # launch: test_launch_errors.py
