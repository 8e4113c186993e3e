#!/usr/bin/env bash
# The install and check steps of both images: docker/Dockerfile (NGC PyTorch base) and docker/Dockerfile.cpu
# (Debian + Python 3.11) run the same steps in the same order, so building the CPU image (`make docker-test`)
# runs the GPU image's steps too; only the base differs.
#
#   docker/install.sh os [PYTHON]  apt: tini (the images' PID 1, forwards SIGTERM), and PYTHON with its venv
#                                  module when the base lacks it (a bare Debian base: python3.11, the locks' Python)
#   docker/install.sh deps LOCK    the lock minus what the base already provides (docker/lock_for_base.py writes
#                                  /etc/megatron_moe/install.txt and keep-base.txt), then pip installs it from the
#                                  configured index and find-links; if torch's CPU build is not there, retries
#                                  with PyTorch's CPU index ($TORCH_CPU_INDEX), as `make venv` does
#   docker/install.sh project      this checkout, editable, without dependencies (as `make venv` does)
#   docker/install.sh check        pip check; every package at its locked (or kept) version; the imports
#   docker/install.sh user         the default user (uid 1000, `moe` unless the base has one) and the directories
#                                  any uid must write: HOME=/home/moe and the mount points data/ checkpoints/ runs/
#
# Build arguments of both Dockerfiles, read here: PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS,
# PIP_TRUSTED_HOST (a mirror or a wheel directory instead of the public indexes; empty: pip's defaults) and
# TORCH_CPU_INDEX (empty: no retry). A CA bundle for pip (behind a TLS-intercepting proxy) comes as the build
# secret `pip_cert` and is never stored in the image.
set -euo pipefail

STATE=/etc/megatron_moe
PYTHON=${PYTHON:-python}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST TORCH_CPU_INDEX; do
    [[ -n "${!var:-}" ]] || unset "$var"
done
if [[ -s /run/secrets/pip_cert ]]; then
    export PIP_CERT=/run/secrets/pip_cert
fi

step_os() {
    local python=${1:-}
    local pkgs=()
    command -v tini >/dev/null 2>&1 || pkgs+=(tini)
    if [[ -n "$python" ]] && ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then
        pkgs+=("$python" "$python-venv" ca-certificates)
    fi
    if ((${#pkgs[@]})); then
        echo "apt: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${pkgs[@]}"
        rm -rf /var/lib/apt/lists/*
    fi
    tini --version
    if [[ -n "$python" ]]; then
        "$python" --version
    fi
}

step_deps() {
    local lock=${1:?usage: install.sh deps LOCK}
    local base=() constraint
    # The base's own pip constraint file (NGC sets PIP_CONSTRAINT): its pins are kept as well.
    for constraint in ${PIP_CONSTRAINT:-}; do
        base+=(--base-constraint "$constraint")
    done
    mkdir -p "$STATE"
    "$PYTHON" docker/lock_for_base.py split "$lock" --out-dir "$STATE" "${base[@]}"
    local pip=("$PYTHON" -m pip install --no-cache-dir -r "$STATE/install.txt" -c "$STATE/keep-base.txt")
    if ! "${pip[@]}"; then
        if [[ -n "${TORCH_CPU_INDEX:-}" ]] && grep -q '^torch==.*+cpu' "$STATE/install.txt"; then
            echo "-- retrying with $TORCH_CPU_INDEX for torch's CPU build"
            "${pip[@]}" --extra-index-url "$TORCH_CPU_INDEX"
        else
            return 1
        fi
    fi
}

step_project() {
    "$PYTHON" -m pip install --no-cache-dir --no-deps --no-build-isolation -e .
}

step_check() {
    "$PYTHON" -m pip check
    "$PYTHON" docker/lock_for_base.py verify --out-dir "$STATE"
    "$PYTHON" -c "import sys, torch, transformers, megatron.core, megatron_moe, moe_kernels
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| transformers', transformers.__version__, '| megatron_moe ok')"
    tini --version
}

step_user() {
    if ! getent passwd 1000 >/dev/null; then
        useradd --uid 1000 --no-create-home --home-dir /home/moe --shell /bin/bash moe
    fi
    # Sticky and world-writable: `--user $(id -u):$(id -g)` gets a writable HOME (caches of HF, Triton,
    # matplotlib) and mount points, without an entry in /etc/passwd.
    install -d -m 1777 /home/moe data checkpoints runs
}

case "${1:-}" in
    os) shift; step_os "$@" ;;
    deps) shift; step_deps "$@" ;;
    project) step_project ;;
    check) step_check ;;
    user) step_user ;;
    *) echo "usage: docker/install.sh os [PYTHON] | deps LOCK | project | check | user" >&2; exit 2 ;;
esac
