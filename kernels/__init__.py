"""Triton kernels for MoE (imported as moe_kernels). Filled in by the kernels work."""
