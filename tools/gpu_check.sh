#!/usr/bin/env bash
# Every GPU check in one pass, for a machine with a CUDA GPU: the gpu-marked tests, then the kernel, MoE-layer
# and training benchmarks. Each step has its own time limit, and a failing step does not stop the later ones.
# Results go to $OUT (default ./gpu_out); copy the numbers into docs/benchmarks.md with device, date and commit.
#
#   bash tools/gpu_check.sh                      # in a venv made by `make venv` on the GPU machine
#   OUT=/tmp/out bash tools/gpu_check.sh         # without installing: moe_kernels is found in ./kernels
#
# Without an installed megatron_moe, megatron-core must be importable, for example from a wheel that you
# unpacked into PYTHONPATH (see docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ! "$PY" -c "import moe_kernels" 2>/dev/null; then  # not installed: the package is ./kernels/moe_kernels
    export PYTHONPATH="$PWD/kernels:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

step() {  # step NAME SECONDS COMMAND...: run, keep stdout+stderr in $OUT/NAME.txt, report the exit code
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    tail -n 3 "$OUT/$name.txt"
}

{ nvidia-smi -L; date -u +%FT%TZ; git rev-parse --short HEAD 2>/dev/null; } > "$OUT/device.txt" 2>&1
"$PY" -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
    >> "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

step gpu_tests 300 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
step kernels 240 "$PY" tools/benchmark_kernels.py --json "$OUT/kernels.json"
step moe_layer 120 "$PY" tools/benchmark_moe_layer.py --device cuda --dtype bfloat16 --hidden 4096 --ffn 688 \
    --experts 16 --top-k 4 --batch 4 --seq 4096 --json "$OUT/moe_layer.json"
step training 180 "$PY" tools/benchmark_training.py gpu --layers 4 --seq 4096 --micro-batch 1 --steps 5
