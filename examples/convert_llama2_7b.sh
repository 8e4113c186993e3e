#!/usr/bin/env bash
# Convert a dense LLaMA-2-7B checkpoint into the paper's three MoE checkpoints (Independent-Random split).
#
#   DENSE_DIR=/shared/models/Llama-2-7b-hf examples/convert_llama2_7b.sh
#   DENSE_DIR=... OUT_ROOT=/shared/checkpoints ONLY=llama_moe_3.0b_2of16 examples/convert_llama2_7b.sh
#
# Environment:
#   DENSE_DIR  LLaMA-2-7B in HF (config.json + safetensors) or Meta (params.json + consolidated.*.pth) format.
#   OUT_ROOT   where the MoE checkpoints go (default: checkpoints, the path the preset configs load from).
#   ONLY       convert just this one (llama_moe_3.0b_2of16, llama_moe_3.5b_4of16 or llama_moe_3.5b_2of8).
#   SEED       split seed (default 1227).   DTYPE  bf16 (default), fp16 or fp32.   PYTHON  interpreter.
# Runs on CPU; each conversion streams the 13 GB of bf16 weights and needs roughly that much free disk.
set -euo pipefail

: "${DENSE_DIR:?set DENSE_DIR to the LLaMA-2-7B checkpoint directory}"
OUT_ROOT=${OUT_ROOT:-checkpoints}
ONLY=${ONLY:-}
SEED=${SEED:-1227}
DTYPE=${DTYPE:-bf16}
PYTHON=${PYTHON:-python}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ! -d "$DENSE_DIR" ]]; then
    echo "error: DENSE_DIR=$DENSE_DIR is not a directory" >&2
    exit 2
fi
mkdir -p "$OUT_ROOT"

# name, experts, top-k; the score scale defaults to experts / top-k (8, 4, 4), as in the paper.
convert() {
    local name=$1 experts=$2 top_k=$3
    if [[ -n "$ONLY" && "$ONLY" != "$name" ]]; then
        return 0
    fi
    if [[ -f "$OUT_ROOT/$name/config.json" ]]; then
        echo "skip $name: $OUT_ROOT/$name already exists"
        return 0
    fi
    echo "converting $DENSE_DIR -> $OUT_ROOT/$name ($experts experts, top-$top_k)"
    "$PYTHON" tools/convert_llama_to_moe.py \
        --load "$DENSE_DIR" --save "$OUT_ROOT/$name" \
        --num-experts "$experts" --top-k "$top_k" \
        --method random --gate noisy_topk --gate-network mlp \
        --seed "$SEED" --dtype "$DTYPE"
}

convert llama_moe_3.0b_2of16 16 2
convert llama_moe_3.5b_4of16 16 4
convert llama_moe_3.5b_2of8 8 2
