"""Checkpoints: layout-independent storage of canonical tensors (docs/checkpoint_format.md)."""
from .format import apply_checkpoint_config, config_dict, is_checkpoint, read_config, read_index, resolve
from .sharded import as_global, load_into, local_of, model_tensors, save_model
from .store import CheckpointWriter, iter_tensors, part_of, read_tensors

__all__ = ["apply_checkpoint_config", "config_dict", "is_checkpoint", "read_config", "read_index", "resolve",
           "as_global", "load_into", "local_of", "model_tensors", "save_model", "CheckpointWriter", "iter_tensors",
           "part_of", "read_tensors"]
