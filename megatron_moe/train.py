"""Training entry point.

    python -m megatron_moe.train --config CONFIG.yaml [key.sub=value ...]
    torchrun --nproc-per-node N -m megatron_moe.train --config CONFIG.yaml [...]
    srun python -m megatron_moe.train --config CONFIG.yaml [...]      # SLURM env vars are detected

Restarting with the same logging.run_dir resumes from RUN_DIR/checkpoints/latest.
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from .cli import run
    from .config import load_config
    from .training import run_training

    parser = argparse.ArgumentParser(prog="python -m megatron_moe.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (defaults + overrides when omitted)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=1e-4 parallel.ep=2")
    args = parser.parse_args(argv)

    def go() -> int:
        cfg = load_config(args.config, args.overrides)
        run_training(cfg)
        return 0

    run(go)
    return 0


if __name__ == "__main__":
    main()
