"""megatron_moe: build Mixture-of-Experts models from dense LLaMA-2 checkpoints and continue pre-training them."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import megatron_moe` stays light; `from megatron_moe import load_model` works
    if name == "load_model":
        from .api import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
