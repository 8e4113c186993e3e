"""`megatron-moe preprocess` against Megatron-LM's `tools/preprocess_data.py`, measured in the same run.

Driven by tools/benchmark_preprocess.py. Both tools run as child processes on the same JSONL corpus
(data/local_corpus.py `build_mixed_corpus`) with the same sentencepiece model, at the same `--workers`, alternating which goes
first. For each run: wall time, and CPU time of all its processes (user + system of the child and every
descendant it waited for, from `os.wait4`), so threads inside a worker count as cost, not speed. Megatron-LM
runs unmodified from its own checkout, in a scratch directory, with `--tokenizer-type SentencePieceTokenizer`
(no BOS/EOS); our documents are compared with its documents token for token after dropping our leading BOS.
Start-up: wall time of `megatron-moe preprocess --help` and of a one-document input.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Run:
    wall: float
    cpu: float


@dataclass
class Case:
    workers: int
    tokens: int = 0
    ours: list = field(default_factory=list)
    theirs: list = field(default_factory=list)


def timed(cmd: list, cwd: str | None = None, env: dict | None = None) -> Run:
    """Wall and CPU seconds (user + sys of the child and its waited-for descendants) of one command."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed ({proc.returncode}): {err.read()[-3000:]}")
    return Run(wall, ru.ru_utime + ru.ru_stime)


def read_documents(prefix: str) -> list[np.ndarray]:
    """Documents of an indexed dataset (one sequence per document), read with numpy."""
    idx = Path(prefix + ".idx").read_bytes()
    _, code, n, _ = struct.unpack("<QBQQ", idx[9:34])
    lengths = np.frombuffer(idx, np.int32, n, 34)
    dtype = {8: np.uint16, 4: np.int32}[code]
    data = np.fromfile(prefix + ".bin", dtype)
    return np.split(data, np.cumsum(lengths)[:-1]) if n else []


def compare(ours_prefix: str, theirs_prefix: str, bos: int) -> int:
    """Number of tokens; raises AssertionError naming the first document that differs beyond our leading BOS."""
    ours, theirs = read_documents(ours_prefix), read_documents(theirs_prefix)
    assert len(ours) == len(theirs), f"{len(ours)} documents against Megatron-LM's {len(theirs)}"
    for i, (o, t) in enumerate(zip(ours, theirs)):
        if not (len(o) == len(t) + 1 and o[0] == bos and np.array_equal(o[1:], t)):
            raise AssertionError(f"document {i} differs: ours {o[:12].tolist()}... Megatron-LM {t[:12].tolist()}...")
    return int(sum(len(t) for t in theirs))


def ours_cmd(corpus: str, tokenizer: str, prefix: str, workers: int) -> list:
    return [sys.executable, "-m", "megatron_moe.cli", "preprocess", "--input", corpus, "--tokenizer", tokenizer,
            "--save", prefix, "--workers", str(workers), "--no-progress"]


def theirs_cmd(megatron: Path, corpus: str, tokenizer: str, prefix: str, workers: int) -> list:
    return [sys.executable, str(megatron / "tools" / "preprocess_data.py"), "--input", corpus,
            "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer,
            "--workers", str(workers), "--log-interval", "1000000000"]


def run_cases(megatron: Path, corpus: str, tokenizer: str, work: Path, workers: list[int], repeats: int,
              bos: int = 1, log=print) -> list[Case]:
    cases = [Case(w) for w in workers]
    scratch = work / "megatron_cwd"  # Megatron-LM runs from a directory of its own
    scratch.mkdir(parents=True, exist_ok=True)
    for r in range(repeats):
        for case in cases:
            w = case.workers
            ours_prefix, theirs_prefix = str(work / f"ours_w{w}"), str(work / f"theirs_w{w}")
            for p in Path(work).glob(f"*_w{w}*.*"):
                p.unlink()
            order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
            for who in order:
                if who == "ours":
                    run = timed(ours_cmd(corpus, tokenizer, ours_prefix, w))
                    case.ours.append(run)
                else:
                    run = timed(theirs_cmd(megatron, corpus, tokenizer, theirs_prefix, w), cwd=str(scratch))
                    case.theirs.append(run)
                log(f"  repeat {r + 1}, workers {w}, {who:6s}: {run.wall:6.1f} s wall, {run.cpu:6.1f} s CPU")
            case.tokens = compare(ours_prefix, theirs_prefix + "_text_document", bos)
    return cases


def startup(tokenizer: str, work: Path, repeats: int = 5) -> dict:
    """Median wall seconds of `preprocess --help` and of preprocessing a one-document input."""
    tiny = work / "tiny.jsonl"
    tiny.write_text('{"text": "one short document"}\n')
    help_runs, tiny_runs = [], []
    for _ in range(repeats):
        help_runs.append(timed([sys.executable, "-m", "megatron_moe.cli", "preprocess", "--help"]).wall)
        for p in work.glob("tiny_out.*"):
            p.unlink()
        tiny_runs.append(timed(ours_cmd(str(tiny), tokenizer, str(work / "tiny_out"), 1)).wall)
    return {"help": statistics.median(help_runs), "tiny": statistics.median(tiny_runs)}


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:12]


def table(cases: list[Case]) -> str:
    """Markdown rows: medians of wall time and of tokens per CPU-second, and the ratios. The wall speed-up is the
    median of the per-repeat ratios (each repeat runs both tools back to back, so a change of machine load
    between repeats cancels); the ratio of the median walls is shown beside it."""
    lines = ["| workers | Megatron-LM wall | ours wall | wall speed-up (paired) | ratio of median walls | "
             "Megatron-LM tok/CPU-s | ours tok/CPU-s | tokens per CPU-second ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        tw, ow = statistics.median(r.wall for r in c.theirs), statistics.median(r.wall for r in c.ours)
        tc, oc = statistics.median(r.cpu for r in c.theirs), statistics.median(r.cpu for r in c.ours)
        paired = statistics.median(t.wall / o.wall for t, o in zip(c.theirs, c.ours))
        lines.append(f"| {c.workers} | {tw:.1f} s | {ow:.1f} s | {paired:.2f}× | {tw / ow:.2f}× | "
                     f"{c.tokens / tc / 1e6:.2f} M | {c.tokens / oc / 1e6:.2f} M | {tc / oc:.2f}× |")
    return "\n".join(lines)


def clean(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
