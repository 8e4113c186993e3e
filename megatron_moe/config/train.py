"""Optimisation, checkpointing and logging (train:, checkpoint:, logging: sections)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ._base import ConfigError, _at_least


SHARDING_MODES = ("none", "zero1", "zero2", "fsdp")
RENAMED_KEYS = {"train.zero1": "train.zero1 was replaced by train.sharding (zero1: true -> sharding: zero1)"}


@dataclass
class TrainConfig:
    """Optimizer, schedule, batch sizes and the training loop."""

    micro_batch_size: int = 1
    """Sequences per rank per forward/backward."""
    global_batch_size: int = 8
    """Sequences per optimizer step across all data-parallel ranks (accumulation fills the gap)."""
    train_steps: int = 100
    """Optimizer steps to run."""
    lr: float = 2e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine/linear)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    lr_schedule: str = "cosine"
    """Learning-rate schedule after warm-up: cosine, linear or constant."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to norms and biases)."""
    clip_grad: float = 1.0
    """Clip gradients to this global norm (0 disables)."""
    seed: int = 1227
    """Global seed (model init, dropout-free noise, data order)."""
    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32. bf16 keeps fp32 master weights."""
    recompute: bool = False
    """Activation recomputation of every decoder layer."""
    sharding: str = "none"
    """What is sharded over the data-parallel ranks (dense tensors over dp, expert tensors over edp):
    none (every rank holds full weights, gradients and AdamW state); zero1 (AdamW state, torch
    ZeroRedundancyOptimizer); zero2 (FSDP2 with reshard_after_forward=False: fp32 master weights, gradients and
    AdamW state sharded, weights gathered once per micro-batch and kept from forward to backward); fsdp (FSDP2:
    as zero2, and weights are gathered layer by layer in forward and again in backward). Composes with
    tp/sp/ep/etp. README "Parallelism" says which to pick."""
    offload_optimizer: bool = False
    """Keep the sharded fp32 master weights, gradients and AdamW state in host memory and run AdamW on the CPU
    (FSDP2's CPUOffloadPolicy); needs sharding zero2 or fsdp."""
    keep_host_memory: bool = True
    """On CPU (gloo), the train command's process keeps freed host memory for reuse (glibc malloc: no mmap for
    large blocks, no trimming; megatron_moe/host_memory.py) instead of faulting the gradients and activations it
    frees every step in again: faster steps, memory held at its high-water mark until exit. Ignored on CUDA, and
    where GLIBC_TUNABLES, MALLOC_*_ or LD_PRELOAD chose the allocator."""
    eval_interval: int = 0
    """Evaluate per-domain validation loss every N steps (0 = never)."""
    eval_iters: int = 4
    """Batches per domain per evaluation."""
    log_interval: int = 1
    """Log metrics every N steps."""
    max_bad_steps: int = 5
    """Abort after this many consecutive steps with a non-finite loss or gradient norm."""
    exit_interval: Optional[int] = None
    """Save a checkpoint and exit cleanly once the step count is a multiple of this (e.g. to fit a SLURM time
    limit; the same command resumes). None runs to train_steps."""
    stop_signals: list = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals that stop training gracefully: finish the step, save a checkpoint, exit with code 75 (rerun the
    same command to resume). SIGTERM is what slurm, `scancel`, preemption and `docker stop` send; SIGUSR1 is what
    `sbatch --signal=USR1@SECONDS` sends ahead of the time limit. [] makes SIGTERM stop at once (exit 143)."""

    def validate(self) -> None:
        if self.sharding not in SHARDING_MODES:
            raise ConfigError(f"train.sharding={self.sharding!r} is not one of {', '.join(SHARDING_MODES)}")
        if self.offload_optimizer and self.sharding not in ("zero2", "fsdp"):
            raise ConfigError(f"train.offload_optimizer=true needs train.sharding zero2 or fsdp (FSDP2's CPU "
                              f"offload), not {self.sharding}")
        if self.lr_schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"train.lr_schedule={self.lr_schedule!r} is not one of cosine, linear, constant")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision={self.precision!r} is not one of auto, bf16, fp32")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("micro_batch_size", "global_batch_size", "train_steps", "max_bad_steps", "eval_iters",
                     "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        _at_least("train", self, ("lr", "warmup_steps", "weight_decay", "clip_grad", "eval_interval"), 0)
        _at_least("train", self, ("exit_interval",), 1)
        _at_least("train", self, ("adam_eps",), 0, strict=True)
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError(f"train.adam_beta1={self.adam_beta1}, adam_beta2={self.adam_beta2} must be in [0, 1)")
        from ..signals import parse_signal

        for name in self.stop_signals:
            try:
                sig = parse_signal(name)
            except ValueError:
                raise ConfigError(f"train.stop_signals: unknown signal {name!r}") from None
            if sig.name in ("SIGKILL", "SIGSTOP", "SIGINT"):
                raise ConfigError(f"train.stop_signals: {sig.name} cannot be used (SIGINT, Ctrl-C, always stops at "
                                  f"once; SIGKILL and SIGSTOP cannot be caught)")


@dataclass
class CheckpointConfig:
    """Checkpoint saving and loading."""

    load: Optional[str] = None
    """Checkpoint to start from (converted MoE or trained); its config.json supplies the model config."""
    save_interval: int = 0
    """Save every N steps (0 = only at the end)."""
    keep_last: int = 3
    """Keep the newest N checkpoints in the run directory (0 keeps all)."""
    save_optimizer: bool = True
    """Save optimizer state (needed for exact resume)."""

    def validate(self) -> None:
        _at_least("checkpoint", self, ("save_interval", "keep_last"), 0)
        if self.load is not None and not self.load:
            raise ConfigError("checkpoint.load is an empty string; give a path or null")


@dataclass
class LoggingConfig:
    """Run directory and metrics sinks."""

    run_dir: str = "runs/default"
    """Run directory: resolved config, metrics.jsonl, checkpoints/, tensorboard/."""
    tensorboard: bool = True
    """Write TensorBoard event files to run_dir/tensorboard."""
    wandb_project: Optional[str] = None
    """wandb project; None disables wandb. Without WANDB_API_KEY it runs offline (sync later)."""
    wandb_name: Optional[str] = None
    """wandb run name (defaults to the run directory name)."""
    peak_tflops: Optional[float] = None
    """Per-device peak TFLOPS for MFU; None picks a known value for the GPU (H100 989, A100 312) or skips MFU."""
    lock_run_dir: bool = True
    """Hold an flock on run_dir/.lock while training, so a second job on the same run directory is refused
    (training/run_lock.py). Set false only on a filesystem without flock support."""

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("logging.run_dir is empty")
        _at_least("logging", self, ("peak_tflops",), 0, strict=True)
