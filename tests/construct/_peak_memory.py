"""Peak memory of import, convert and export, measured inside this process (run by test_streaming_memory.py).

    MALLOC_MMAP_THRESHOLD_=65536 python tests/construct/_peak_memory.py WORKDIR

Builds a dense LLaMA with transformers (many equal layers, saved in bf16 as LLaMA checkpoints are, one
model.safetensors), then runs each operation
once on a one-layer model (imports, thread pools and caches are then in place) and once on the real one, sampling
the process's anonymous resident memory (RssAnon in /proc/self/status: what the process allocated, not the pages of
the memory-mapped input files) every millisecond. Prints one JSON line: per operation the peak above the memory
before it started, plus the model's and one layer's size.
The fixed malloc mmap threshold makes every tensor-sized block its own mapping, returned to the system when freed,
so the resident memory follows what is alive instead of what glibc's heap kept.
"""
from __future__ import annotations

import gc
import json
import sys
import threading
import time
from pathlib import Path

import torch

LAYERS, HIDDEN, FFN, VOCAB = 24, 256, 1024, 2048


def rss_anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler:
    def __init__(self, period_s: float = 0.001):
        self.period, self.peak, self._stop = period_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(self.period)

    def __enter__(self):
        self.peak = rss_anon()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())


def make_dense(path: Path, layers: int) -> int:
    """A random LLaMA saved in bf16 with save_pretrained; returns its size in bytes in fp32, the dtype import and
    convert write (so every tensor they hold is a copy in anonymous memory, not a view of the mapped file)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float()
    size = sum(p.numel() * 4 for p in model.parameters())
    model = model.to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True, max_shard_size="10GB")
    del model
    gc.collect()
    return size


def operations(work: Path, tag: str, layer_bytes: int):
    from megatron_moe.construct.convert import ConvertOptions, convert_dense_to_moe
    from megatron_moe.construct.import_dense import import_dense
    from megatron_moe.export import export_hf

    dense = work / f"{tag}_hf"
    yield "import", lambda: import_dense(dense, work / f"{tag}_ours", progress=False)
    yield "convert", lambda: convert_dense_to_moe(dense, work / f"{tag}_moe", ConvertOptions(num_experts=4, top_k=2,
                                                                                           seed=1), progress=False)
    # shards of two layers: export holds one output shard, and the part being read, at a time
    yield "export", lambda: export_hf(work / f"{tag}_ours", work / f"{tag}_export", "llama",
                                      max_shard_bytes=2 * layer_bytes)


def main(work: str) -> None:
    work = Path(work)
    make_dense(work / "warm_hf", 1)
    model_bytes = make_dense(work / "big_hf", LAYERS)
    layer_bytes = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN) * 4
    for _, op in operations(work, "warm", layer_bytes):
        op()
    out = {"model_bytes": model_bytes, "layer_bytes": layer_bytes, "layers": LAYERS}
    for name, op in operations(work, "big", layer_bytes):
        gc.collect()
        base = rss_anon()
        with PeakSampler() as s:
            op()
        out[name] = s.peak - base
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
