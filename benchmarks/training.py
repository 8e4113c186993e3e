"""Training-step benchmarks (driven by tools/benchmark_training.py).

cpu_vs_mixtral: tokens/s of fwd + bwd + AdamW step of our MoE model against transformers' MixtralForCausalLM
  built from the same config (softmax top-k router, same E/K/F, same layers/heads, SDPA attention, router aux
  loss on in both), on the same random token batches, timed alternately in one process.
gpu_step: one training step (bf16 autocast, fp32 master weights, fused AdamW) of LLaMA-MoE-3.5B-shaped layers
  with fewer layers; reports tokens/s and MFU on activated parameters (training/metrics.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from megatron_moe.config import Config, ModelConfig, MoEConfig
from megatron_moe.training.metrics import peak_tflops, train_flops_per_token


@dataclass
class BenchResult:
    name: str
    tokens_per_sec: float
    step_ms: float


def demo_config(layers: int = 4, hidden: int = 256, experts: int = 8, top_k: int = 2, ffn: int = 256,
                vocab: int = 512, seq_len: int = 128) -> Config:
    cfg = Config(model=ModelConfig(hidden_size=hidden, intermediate_size=ffn * experts, num_layers=layers,
                                   num_heads=max(1, hidden // 32), num_kv_heads=max(1, hidden // 64),
                                   vocab_size=vocab, max_seq_len=seq_len),
                 moe=MoEConfig(num_experts=experts, top_k=top_k, expert_ffn_size=ffn, router="softmax_topk",
                               aux_loss_coeff=0.01, use_kernels="off"))
    cfg.data.seq_len = seq_len
    return cfg


def _ours(cfg: Config, device: torch.device):
    from megatron_moe.model import build_model, init_weights

    model = build_model(cfg).to(device)
    init_weights(model, 0)
    with torch.no_grad():  # a trained router, not the zero init (all tokens would tie onto experts 0, 1)
        for name, p in model.named_parameters():
            if ".router." in name:
                p.normal_(0.0, 0.5)
    return model, lambda ids: model.loss(ids[:, :-1], ids[:, 1:])[0]


def _mixtral(cfg: Config, device: torch.device):
    from transformers import MixtralConfig, MixtralForCausalLM

    m, moe = cfg.model, cfg.moe
    hf_cfg = MixtralConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=moe.ffn_size(m),
                           num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                           num_key_value_heads=m.kv_heads, num_local_experts=moe.num_experts,
                           num_experts_per_tok=moe.top_k, max_position_embeddings=m.max_seq_len,
                           output_router_logits=True, router_aux_loss_coef=moe.aux_loss_coeff,
                           attn_implementation="sdpa", tie_word_embeddings=False)
    model = MixtralForCausalLM(hf_cfg).to(device).train()

    def loss(ids):
        return model(input_ids=ids[:, :-1], labels=ids[:, :-1].clone()).loss  # HF shifts labels itself

    return model, loss


def _step_fn(model, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(ids):
        loss = loss_fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def cpu_vs_mixtral(cfg: Config, batch: int = 8, steps: int = 10, warmup: int = 2, seed: int = 0) -> dict:
    """{'ours': BenchResult, 'mixtral': BenchResult, 'ratio': ours/mixtral tokens/s}."""
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    S = cfg.data.seq_len
    batches = [torch.randint(0, cfg.model.vocab_size, (batch, S + 1), generator=g) for _ in range(warmup + steps)]
    runners = {"ours": _step_fn(*_ours(cfg, device)), "mixtral": _step_fn(*_mixtral(cfg, device))}
    times = {k: 0.0 for k in runners}
    for i, ids in enumerate(batches):
        for name, step in runners.items():  # alternate, so drift in machine load hits both alike
            t0 = time.perf_counter()
            step(ids)
            if i >= warmup:
                times[name] += time.perf_counter() - t0
    tokens = batch * S * steps
    res = {k: BenchResult(k, tokens / t, 1000 * t / steps) for k, t in times.items()}
    return {**res, "ratio": res["ours"].tokens_per_sec / res["mixtral"].tokens_per_sec}


def llama_moe_35b_config(layers: int = 4, seq_len: int = 4096) -> Config:
    """LLaMA-MoE-3.5B (2/8) shapes: LLaMA-2-7B attention, 8 experts x 1376, top-2; `layers` decoder layers."""
    cfg = Config(model=ModelConfig(hidden_size=4096, intermediate_size=11008, num_layers=layers, num_heads=32,
                                   num_kv_heads=32, vocab_size=32000, max_seq_len=seq_len),
                 moe=MoEConfig(num_experts=8, top_k=2, expert_ffn_size=1376, router="softmax_topk",
                               aux_loss_coeff=0.01, use_kernels="auto"))
    cfg.data.seq_len = seq_len
    return cfg


def gpu_step(cfg: Config, device: torch.device, micro_batch: int = 1, steps: int = 5, warmup: int = 2) -> dict:
    """Time full training steps on a CUDA `device`; returns tokens/s, step ms, MFU (activated)."""
    model, loss_fn = _ours(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    S = cfg.data.seq_len
    ids = torch.randint(0, cfg.model.vocab_size, (micro_batch, S + 1), device=device)
    elapsed = 0.0
    for i in range(warmup + steps):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        if i >= warmup:
            elapsed += time.perf_counter() - t0
    tps = micro_batch * S * steps / elapsed
    peak = peak_tflops(cfg, device)
    fpt = train_flops_per_token(cfg, S)
    return {"device": torch.cuda.get_device_name(device), "tokens_per_sec": tps, "step_ms": 1000 * elapsed / steps,
            "flops_per_token": fpt, "peak_tflops": peak, "achieved_tflops": tps * fpt / 1e12,
            "mfu": tps * fpt / (peak * 1e12) if peak else None,
            "max_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}


# host_memory_ab: the `train` command on CPU with train.keep_host_memory true against false (glibc's default
# allocator), whole processes alternating, on the demo corpus; a model wide enough that its gradients and
# activations are blocks glibc maps and unmaps (over 32 MiB).
HOST_MEMORY_MODEL = ("model.preset=llama3.2-1b", "model.num_layers=2", "model.vocab_size=512", "model.bos_token_id=1",
                     "model.eos_token_id=2", "moe.num_experts=8", "moe.top_k=2", "data.seq_len=256",
                     "train.micro_batch_size=2", "train.global_batch_size=4")


def host_memory_ab(workdir, steps: int = 30, warmup: int = 5, repeats: int = 2, model=HOST_MEMORY_MODEL) -> dict:
    """Per setting (keep, system): median step time and tokens/s over the steps after `warmup` (pooled over
    repeats), user and system CPU seconds and peak RSS (ru_maxrss) of the whole process (medians over repeats),
    RSS after the last step (the trainer's mem_rss_gib); and the losses of both, which must be identical."""
    import json
    import os
    import shutil
    import statistics
    import subprocess
    import sys
    from pathlib import Path

    from megatron_moe.data.local_corpus import prepare_demo_data

    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    data = prepare_demo_data(work / "data")
    root = Path(__file__).resolve().parents[1]
    domains = ", ".join(f"{{name: {d}, prefixes: [{p}], weight: 0.5}}" for d, p in data["prefixes"].items())
    base = [sys.executable, "-m", "megatron_moe.train", "--config", str(root / "examples/configs/tiny_cpu.yaml"),
            f"data.domains=[{domains}]", "data.sampling=static", "parallel.ep=1", f"train.train_steps={steps}",
            "train.eval_interval=0", "checkpoint.save_interval=0", "train.log_interval=1",
            "logging.tensorboard=false", *model]
    runs: dict = {"keep": [], "system": []}
    for r in range(repeats):
        for name in (("keep", "system") if r % 2 == 0 else ("system", "keep")):
            run_dir = work / f"run_{name}_{r}"
            cmd = base + [f"logging.run_dir={run_dir}", f"train.keep_host_memory={name == 'keep'}"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root,
                                    env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"})
            _, status, ru = os.wait4(proc.pid, 0)
            err = proc.stderr.read().decode()
            proc.stderr.close()
            if os.waitstatus_to_exitcode(status):
                raise RuntimeError(f"train failed: {err[-2000:]}")
            if ("freed host memory is kept for reuse" in err) != (name == "keep"):
                raise RuntimeError(f"train.keep_host_memory={name == 'keep'} did not do what it says: {err[-2000:]}")
            recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            recs = [x for x in recs if "loss" in x]
            runs[name].append(dict(step_s=[x["step_time_s"] for x in recs[warmup:]],
                                   tokens_per_s=[x["tokens_per_sec"] for x in recs[warmup:]],
                                   losses=[x["loss"] for x in recs], user_s=ru.ru_utime, system_s=ru.ru_stime,
                                   peak_rss_gib=ru.ru_maxrss / 2 ** 20, last_rss_gib=recs[-1]["mem_rss_gib"]))
            shutil.rmtree(run_dir)
    out = {}
    for name, rs in runs.items():
        med = lambda key: statistics.median(x[key] for x in rs)  # noqa: E731
        out[name] = dict(step_s=statistics.median(s for x in rs for s in x["step_s"]),
                         tokens_per_s=statistics.median(t for x in rs for t in x["tokens_per_s"]),
                         user_s=med("user_s"), system_s=med("system_s"), peak_rss_gib=med("peak_rss_gib"),
                         last_rss_gib=med("last_rss_gib"))
    out["speedup"] = out["system"]["step_s"] / out["keep"]["step_s"]
    out["same_losses"] = all(a["losses"] == b["losses"] for a, b in zip(runs["keep"], runs["system"]))
    out["config"] = dict(steps=steps, warmup=warmup, repeats=repeats, model=list(model))
    return out
