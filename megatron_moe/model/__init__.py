"""The LLaMA decoder with dense or MoE MLPs (see llama.py)."""
from .init import init_weights
from .llama import LlamaModel, build_model

__all__ = ["LlamaModel", "build_model", "init_weights"]
