#!/usr/bin/env python
"""`megatron-moe preprocess` against Megatron-LM's tools/preprocess_data.py, in the same run; prints ratios.

    # a Megatron-LM checkout at core_v0.16.1 outside this repo (run unmodified), e.g.
    #   git clone https://github.com/NVIDIA/Megatron-LM /work/baselines/Megatron-LM && git -C ... checkout core_v0.16.1
    python tools/benchmark_preprocess.py --megatron /work/baselines/Megatron-LM [--mb 100] [--workers 1,2]
        [--repeats 3] [--workdir /tmp/bench_preprocess] [--keep]

It writes a deterministic mixed JSONL corpus of --mb MB from this machine's Python sources and docs
(data/local_corpus.py `build_mixed_corpus`), trains a 32000-piece sentencepiece BPE with LLaMA-2's settings on it (both cached in --workdir), then runs both tools
--repeats times per worker count, alternating which goes first, checks that every document is identical token
for token (ours has a leading BOS, Megatron-LM's SentencePieceTokenizer none), and prints medians: wall time,
tokens per CPU-second of all processes, and the ratios. Megatron-LM's imports come from this interpreter
(megatron-core 0.16.1 is installed) and from its checkout. Details: benchmarks/preprocess.py.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import preprocess as bench  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megatron", required=True, help="Megatron-LM checkout (core_v0.16.1)")
    p.add_argument("--mb", type=int, default=100, help="corpus size in MB (>= 100 for the issue's target)")
    p.add_argument("--workers", default="1,2", help="comma list of --workers values")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--workdir", default="/tmp/bench_preprocess")
    p.add_argument("--keep", action="store_true", help="keep the corpus, tokenizer and outputs")
    args = p.parse_args(argv)
    megatron = Path(args.megatron).resolve()
    if not (megatron / "tools" / "preprocess_data.py").is_file():
        print(f"error: {megatron}/tools/preprocess_data.py not found", file=sys.stderr)
        return 2
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus_{args.mb}mb.jsonl"
    from megatron_moe.data.local_corpus import build_mixed_corpus
    from megatron_moe.data.spm_train import train_sentencepiece_from_files

    if not corpus.is_file():
        build_mixed_corpus(corpus, args.mb << 20)
    tok = work / f"spm_llama_style_{args.vocab_size}.model"
    if not tok.is_file():
        train_sentencepiece_from_files([corpus], tok, vocab_size=args.vocab_size, llama_style=True,
                                       max_sentences=300_000)
    tag = subprocess.run(["git", "describe", "--tags", "--always"], capture_output=True, text=True, cwd=megatron
                         ).stdout.strip()
    docs = sum(1 for _ in open(corpus, "rb"))
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {_commit()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"# corpus {corpus.name}: {corpus.stat().st_size / 2**20:.1f} MiB, {docs} documents, sha256 "
          f"{bench.file_digest(corpus)}; tokenizer {tok.name} sha256 {bench.file_digest(tok)}; Megatron-LM {tag}")
    from megatron_moe.data.tokenizer import load_tokenizer

    t = load_tokenizer(tok)
    print(f"# our sentencepiece path: {'segment cache (data/spm_fast.py)' if t.fast else 'sentencepiece batch'}")
    try:
        cases = bench.run_cases(megatron, str(corpus), str(tok), work, [int(w) for w in args.workers.split(",")],
                                args.repeats, bos=t.bos_id)
        st = bench.startup(str(tok), work)
    finally:
        if not args.keep:
            for f in work.glob("*_w*.*"):
                f.unlink()
    print(f"# documents identical token for token (after our BOS); {cases[0].tokens} tokens of text")
    print(bench.table(cases))
    print(f"start-up (median of 5): `preprocess --help` {st['help']:.2f} s, one-document input {st['tiny']:.2f} s")
    if not args.keep:
        bench.clean(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
