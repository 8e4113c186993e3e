"""Continual pre-training: loop, optimizer (+ZeRO-1), schedule, grads, checkpoints, metrics (docs/training.md)."""
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .metrics import MetricsWriter, train_flops_per_token
from .optimizer import TrainOptimizer
from .preflight import preflight
from .run import build_trainer, run_training
from .schedule import lr_at
from .trainer import Trainer, TrainingError
from .validation import validate

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint", "MetricsWriter", "train_flops_per_token",
           "TrainOptimizer", "preflight", "build_trainer", "run_training", "lr_at", "Trainer", "TrainingError",
           "validate"]
