"""Pure functions over checkpoints: dense LLaMA readers (HF, Meta), expert construction, format conversion."""
