"""megatron_moe: build Mixture-of-Experts models from dense LLaMA-2 checkpoints and continue pre-training them."""
__version__ = "0.1.0"
