"""`make demo`: the whole pipeline on CPU in a few minutes, with the same tools a user runs.

  1. data      a two-domain corpus from local Python sources/docs, a sentencepiece tokenizer, indexed datasets
  2. dense     a tiny random LLaMA-2 in HF format (the stand-in for Llama-2-7b-hf)
  3. import    HF -> our checkpoint; TP=2 + sequence parallel computes the same logits as one process
  4. convert   dense -> MoE (4 experts, top-2, random split), verified lossless
  5. train     2 processes, EP=2, dynamic domain sampling; stop half-way, resume from the checkpoint, finish
  6. evaluate  per-domain loss and perplexity with tools/evaluate.py
  7. export    to Mixtral (HF), reload model and tokenizer with transformers, generate a few tokens

Everything lands in ./demo_out (or $DEMO_OUT). Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "tiny_cpu.yaml"


def banner(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def sh(*args: str, env: dict | None = None) -> None:
    """Run a user-facing command, echoing it first; stop the demo if it fails."""
    print("$ " + " ".join(args), flush=True)
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    rc = subprocess.run(list(args), cwd=ROOT, env=full_env).returncode
    if rc:
        print(f"demo: step failed with exit code {rc}", file=sys.stderr)
        sys.exit(rc)


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def build_dense(out: Path, tokenizer: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .config import MODEL_PRESETS

    p = MODEL_PRESETS["tiny"]
    torch.manual_seed(1227)
    cfg = LlamaConfig(hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
                      num_hidden_layers=p["num_layers"], num_attention_heads=p["num_heads"],
                      num_key_value_heads=p["num_kv_heads"], vocab_size=p["vocab_size"],
                      max_position_embeddings=p["max_seq_len"], rms_norm_eps=p["norm_eps"], bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    shutil.copy(tokenizer, out / "tokenizer.model")


def main() -> None:
    t0 = time.time()
    out = Path(os.environ.get("DEMO_OUT", ROOT / "demo_out"))
    rel = os.path.relpath(out, ROOT)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    py = sys.executable

    banner("1/7 data: corpus from this machine's Python sources and docs -> tokenizer -> indexed datasets")
    from .data.local_corpus import prepare_demo_data

    data = prepare_demo_data(out / "data")
    for d, st in data["stats"].items():
        print(f"  {d}: {st.documents} documents, {st.tokens} tokens -> {data['prefixes'][d]}")

    banner("2/7 dense: a tiny random LLaMA-2 in HF format")
    build_dense(out / "dense_hf", data["tokenizer"])
    print(f"  {out / 'dense_hf'}")

    banner("3/7 import into our checkpoint format; check TP=2 + SP computes the same logits")
    sh(py, "tools/import_llama.py", "--load", f"{rel}/dense_hf", "--save", f"{rel}/dense")
    sh(*torchrun(2, "tools/check_layout.py", "--load", f"{rel}/dense", "--tp", "2", "--sp"))

    banner("4/7 convert: dense -> MoE with 4 experts, top-2, random split (the paper's choice), verified")
    sh(py, "tools/convert_llama_to_moe.py", "--load", f"{rel}/dense_hf", "--save", f"{rel}/moe",
       "--num-experts", "4", "--top-k", "2", "--method", "random", "--gate-network", "linear", "--seed", "1227",
       "--verify")
    sh(*torchrun(2, "tools/check_layout.py", "--load", f"{rel}/moe", "--ep", "2"))

    banner("5/7 train: 2 processes, EP=2, dynamic domain sampling; interrupt at step 40, then resume")
    common = ["--config", str(CONFIG.relative_to(ROOT)), f"checkpoint.load={rel}/moe",
              f"logging.run_dir={rel}/run",
              f"data.domains=[{{name: code, prefixes: [{data['prefixes']['code']}], weight: 0.5, ref_loss: 3.0}},"
              f" {{name: prose, prefixes: [{data['prefixes']['prose']}], weight: 0.5, ref_loss: 3.5}}]"]
    sh(*torchrun(2, "-m", "megatron_moe.train", *common, "train.exit_interval=40"))
    print("  -- interrupted; starting again with the same run directory resumes from checkpoints/latest")
    sh(*torchrun(2, "-m", "megatron_moe.train", *common))

    banner("6/7 evaluate: per-domain loss and perplexity of the trained model (the trainer logged validation losses above)")
    sh(py, "tools/evaluate.py", "--load", f"{rel}/run", "--data", f"code={data['prefixes']['code']}",
       f"prose={data['prefixes']['prose']}", "--seq-len", "128", "--max-batches", "4")

    banner("7/7 export to Mixtral (HF); AutoTokenizer and AutoModelForCausalLM load it; generate")
    sh(py, "tools/export_hf.py", "--load", f"{rel}/run", "--save", f"{rel}/mixtral_hf", "--format", "mixtral")
    generate(out / "mixtral_hf", out / "run")
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    print(f"\ndemo finished in {time.time() - t0:.0f} s: training loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"outputs in {out}")


def generate(hf_dir: Path, run_dir: Path) -> None:
    """Reload the export with transformers (model and tokenizer), check it computes our logits and tokenizes like
    the run's sentencepiece model, and continue a prompt greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .api import load_model
    from .data import load_tokenizer

    spm = load_tokenizer(str(hf_dir / "tokenizer.model"))  # the run's sentencepiece model, carried by the export
    tok = AutoTokenizer.from_pretrained(hf_dir)  # the export's tokenizer.json, written from it
    sample = (ROOT / "megatron_moe" / "demo.py").read_text() + " Ünïcödé 日本語   runs  of spaces\t\n"
    same = tok(sample, verbose=False)["input_ids"] == [spm.bos_id] + spm.encode(sample)
    print(f"  {type(tok).__name__} loaded from {hf_dir}: {len(spm.encode(sample)) + 1} ids of this file's text, "
          f"{'the same as' if same else 'DIFFERENT from'} sentencepiece's")
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ours = load_model(run_dir)
    prompt = "def main("
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (model(ids).logits - ours(ids)).abs().max().item()
        gen = model.generate(ids, max_new_tokens=16, do_sample=False)
    print(f"  {type(model).__name__} loaded from {hf_dir} with transformers; max |logits - ours| = {diff:.1e}")
    print(f"  greedy continuation of {prompt!r}: {tok.decode(gen[0], skip_special_tokens=True)!r}")
    if not same:
        sys.exit("demo: the exported tokenizer.json tokenizes differently from the run's sentencepiece model")
    if not diff <= 1e-3:  # NaN fails
        sys.exit(f"demo: exported model disagrees with the trained checkpoint (max logit diff {diff:.2e})")


if __name__ == "__main__":
    main()
