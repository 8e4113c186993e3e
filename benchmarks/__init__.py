"""Benchmark modules of this repository (not installed: setup.py packages only megatron_moe and moe_kernels).

The thin CLIs in tools/ put the repository root on sys.path and import these as `benchmarks.<name>`.
"""
