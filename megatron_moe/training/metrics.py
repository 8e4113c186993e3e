"""Metrics: metrics.jsonl, TensorBoard, wandb (offline without WANDB_API_KEY) and a console line, rank 0 only.

MFU counts ACTIVATED parameters (the routed experts a token does not visit do no work):

    flops_per_token = 6 * (N_activated - V*D [untied only]) + 6 * L * S * (H*h)
    MFU = tokens_per_sec * flops_per_token / (world_size * peak_flops_per_device)

N_activated (memory_plan.count_params): all non-expert parameters plus top_k of the num_experts routed experts
of every MoE layer. V*D (the input embedding) is a table lookup, not a matmul; with tied embeddings that one
tensor is also the LM head, whose matmul does count. 6 = 2 (multiply-add) x 3
(forward + backward). 6*L*S*(H*h) is causal self-attention: QK^T and AV cost 2*S*(H*h) forward per token per layer
averaged over the causal mask (half the S×S scores), times 3 for forward + backward; H*h = D unless head_dim is set. Recomputation is not
counted (model FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Optional

import torch

from ..config import Config

log = logging.getLogger(__name__)

PEAK_TFLOPS_BF16 = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "A10": 125.0, "B200": 2250.0}


def train_flops_per_token(cfg: Config, seq_len: Optional[int] = None) -> float:
    """Model FLOPs of one training token (forward + backward), on activated parameters; see module docstring."""
    from ..memory_plan import count_params

    m = cfg.model
    S = seq_len or cfg.data.seq_len
    activated = count_params(cfg).activated
    lookup = 0 if m.tie_embeddings else m.vocab_size * m.hidden_size
    return 6.0 * (activated - lookup) + 6.0 * m.num_layers * S * m.num_heads * m.head_width


def peak_tflops(cfg: Config, device: torch.device) -> Optional[float]:
    """Per-device peak (dense bf16) TFLOPS: logging.peak_tflops, else a known GPU's, else None (no MFU)."""
    if cfg.logging.peak_tflops:
        return cfg.logging.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in name:
            return value
    return None


def memory_stats(device: torch.device) -> dict:
    """Peak accelerator memory (GiB) on CUDA; resident set size of the process on CPU."""
    if device.type == "cuda":
        return {"mem_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "mem_reserved_gib": torch.cuda.memory_reserved(device) / 2**30}
    try:
        import psutil

        return {"mem_rss_gib": psutil.Process(os.getpid()).memory_info().rss / 2**30}
    except ImportError:  # pragma: no cover - psutil is an install requirement
        return {}


def strict_json(value):
    """The record with every non-finite float replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _flatten(record: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class MetricsWriter:
    """Sinks for one run; every method is a no-op on ranks other than 0 (`enabled=False`). Nothing is created in
    the run directory until the first record is logged (a job that fails at start-up leaves no empty files).

    metrics.jsonl holds strict JSON: a non-finite number (the loss of a skipped step) is written as null."""

    def __init__(self, run_dir: str | Path, cfg: Config, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.total_steps = cfg.train.train_steps
        self.tb = self.wandb = None
        self._file = None

    def _open(self) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if cfg.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError as err:
                log.warning("TensorBoard disabled: %s", err)
        if cfg.logging.wandb_project:
            self.wandb = self._init_wandb(cfg)

    def _init_wandb(self, cfg: Config):
        try:
            import wandb
        except ImportError as err:
            log.warning("wandb disabled: %s", err)
            return None
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode == "offline":
            log.info("wandb: no WANDB_API_KEY, logging offline to %s/wandb (sync later with `wandb sync`)",
                     self.run_dir)
        return wandb.init(project=cfg.logging.wandb_project, name=cfg.logging.wandb_name or self.run_dir.name,
                          dir=str(self.run_dir), config=cfg.to_dict(), mode=mode, resume="allow")

    def log(self, record: dict, console: bool = True) -> None:
        """Append one JSON object to metrics.jsonl, send numeric leaves to TensorBoard/wandb, print a line."""
        if not self.enabled:
            return
        from ..atomic import writing

        with writing(self.run_dir / "metrics.jsonl"):  # a full disk: one line naming the file, exit 2
            if self._file is None:
                self._open()
            self._file.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        step = int(record.get("step", 0))
        flat = _flatten({k: v for k, v in record.items() if k != "step"})
        if self.tb is not None:
            for key, value in flat.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(flat, step=step)
        if console:
            log.info(progress_line(record, self.total_steps))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def progress_line(record: dict, total_steps: int) -> str:
    """One console line: step, loss, lr, grad norm, throughput, MFU, memory (or the evaluation summary)."""
    step = record.get("step", 0)
    width = len(str(total_steps))
    if "valid_loss" in record:
        doms = " ".join(f"{d}={v:.4f}" for d, v in record["valid_loss"].items())
        return f"eval  {step:>{width}}/{total_steps} | valid loss {doms}"
    parts = [f"step {step:>{width}}/{total_steps} ({100.0 * step / max(1, total_steps):5.1f}%)"]
    fmt = [("loss", "loss {:.4f}"), ("aux_loss", "aux {:.4f}"), ("lr", "lr {:.3e}"), ("grad_norm", "gnorm {:.3f}"),
           ("tokens_per_sec", "{:,.0f} tok/s"), ("mfu", "mfu {:.1%}"), ("mem_peak_gib", "mem {:.1f} GiB"),
           ("mem_rss_gib", "rss {:.2f} GiB")]
    for key, pattern in fmt:
        value = record.get(key)
        if isinstance(value, (int, float)):
            parts.append(pattern.format(value))
    if record.get("skipped"):
        parts.append("SKIPPED (non-finite)")
    return " | ".join(parts)
