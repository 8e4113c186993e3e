#!/usr/bin/env bash
# Continual pre-training on one node with torchrun (--standalone picks a free port, so two jobs can share a node),
# through `megatron-moe launch`: torchrun's options, plus a preflight check of config, data and checkpoint before
# any worker starts, one `error:` line (exit 2) for bad input, and the elastic-restart setting torch 2.13 needs.
#
#   CONFIG=examples/configs/llama_moe_3.5b_4of16.yaml examples/pretrain_torchrun.sh
#   NPROC=4 OVERRIDES="train.micro_batch_size=1 train.recompute=true" examples/pretrain_torchrun.sh
#   examples/pretrain_torchrun.sh train.train_steps=10          # extra arguments are overrides too
#
# Environment:
#   CONFIG     YAML config (default examples/configs/llama_moe_3.0b_2of16.yaml).
#   NPROC      processes = GPUs on this node (default: all GPUs nvidia-smi lists, else 1).
#   RUN_DIR    run directory for logs, metrics and checkpoints (default: the config's logging.run_dir);
#              restarting with the same RUN_DIR resumes from its latest checkpoint.
#   OVERRIDES  space-separated key.sub=value overrides (values without spaces).
#   MAX_RESTARTS  torchrun --max-restarts: restart the workers this many times after a failure (default 0);
#              a restart resumes from the latest checkpoint.
#   PYTHON     interpreter (default python).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONFIG=${CONFIG:-examples/configs/llama_moe_3.0b_2of16.yaml}
PYTHON=${PYTHON:-python}
if [[ -z "${NPROC:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        NPROC=$(nvidia-smi --list-gpus | wc -l)
    else
        NPROC=1
    fi
fi

args=(--config "$CONFIG")
if [[ -n "${RUN_DIR:-}" ]]; then
    args+=("logging.run_dir=$RUN_DIR")
fi
if [[ -n "${OVERRIDES:-}" ]]; then
    read -r -a extra <<< "$OVERRIDES"
    args+=("${extra[@]}")
fi
args+=("$@")

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

echo "torchrun: $NPROC processes, config $CONFIG"
exec "$PYTHON" -m megatron_moe.cli launch --standalone --nnodes 1 --nproc-per-node "$NPROC" \
    --max-restarts "${MAX_RESTARTS:-0}" -m megatron_moe.train "${args[@]}"
