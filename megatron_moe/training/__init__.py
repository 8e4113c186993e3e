"""Continual pre-training: loop, optimizer (+ZeRO-1), schedule, grads, checkpoints, metrics (docs/training.md)."""
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .evaluate import evaluate
from .metrics import MetricsWriter, train_flops_per_token
from .optimizer import TrainOptimizer
from .run import build_everything, prepare_config, run_training
from .schedule import lr_at
from .trainer import Trainer, TrainingError

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint", "evaluate", "MetricsWriter",
           "train_flops_per_token", "TrainOptimizer", "build_everything", "prepare_config", "run_training", "lr_at",
           "Trainer", "TrainingError"]
