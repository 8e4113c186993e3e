#!/usr/bin/env bash
# `make docker-test`: build docker/Dockerfile.cpu on this machine, then run inside the image, as non-root users
# and without network:
#   demo     the demo's pipeline (python -m megatron_moe.demo), as the image's user (uid 1000), into a mounted
#            run directory;
#   tests    tests/families, tests/moe/test_moe_layouts.py and tests/security, as another uid (--user 4242:4242),
#            with pytest's temporary files in a mounted directory;
#   sigterm  torchrun with two stand-in workers (docker/sigterm_probe.py): `docker stop` must reach both workers
#            before its SIGKILL timeout; and a command without a SIGTERM handler must end at once (tini is PID 1).
# It prints the build time, the image size and each result. Exit codes: 0 all passed, 1 a check failed,
# 2 the machine lacks what the test needs (an engine, a base image or the means to make one).
#
# Environment:
#   ENGINE         docker or podman (default: docker when its daemon answers, else podman)
#   IMAGE          tag to build (default localhost/megatron-moe:cpu-test; kept afterwards)
#   BASE_IMAGE     base to build on (default: Dockerfile.cpu's pinned python:3.11 image; when it cannot be pulled
#                  (no registry), LOCAL_BASE)
#   LOCAL_BASE     a bare Debian bookworm made here with debootstrap --variant=minbase and imported (default
#                  localhost/bookworm-minbase:12; made once, then reused); the build adds Debian's python3.11
#   DEBIAN_MIRROR  debootstrap's mirror (default: the Debian mirror of this machine's apt sources)
#   WHEELS         a wheel directory for pip (default: $PIP_FIND_LINKS when it is a directory), served to the build
#                  on http://127.0.0.1 as a wheel mirror would be; PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
#                  PIP_TRUSTED_HOST and TORCH_CPU_INDEX are passed on as build arguments when set
#   PIP_CERT       CA bundle pip needs behind a TLS-intercepting proxy (default: $SSL_CERT_FILE), a build secret
#   NO_CACHE=1     build without the engine's layer cache (the build time of a first build)
#   STOP_TIMEOUT   seconds `docker stop` waits before SIGKILL in the sigterm check (default 60)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DOCKERFILE=docker/Dockerfile.cpu
IMAGE=${IMAGE:-localhost/megatron-moe:cpu-test}
LOCAL_BASE=${LOCAL_BASE:-localhost/bookworm-minbase:12}
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
TESTS=(tests/families tests/moe/test_moe_layouts.py tests/security)
WS=/workspace/megatron_moe

die() { echo "error: $*" >&2; exit 2; }
say() { echo "== $*"; }

if [[ -z "${ENGINE:-}" ]]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ENGINE=docker
    elif command -v podman >/dev/null 2>&1; then
        ENGINE=podman
    else
        die "neither a Docker daemon nor podman (apt-get install podman buildah runc)"
    fi
fi
engine_version=$("$ENGINE" --version)

work=$(mktemp -d "${TMPDIR:-/tmp}/docker-test.XXXXXX")
server_pid=""
container=""
# shellcheck disable=SC2329  # called by the trap
cleanup() {
    if [[ -n "$container" ]]; then "$ENGINE" rm -f "$container" >/dev/null 2>&1 || true; fi
    if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# --- the base image ----------------------------------------------------------------------------------------------
pinned=$(sed -n 's/^ARG BASE_IMAGE=//p' "$DOCKERFILE")
debian_mirror() {
    local sources
    sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
              2>/dev/null || true)
    grep -oE '(https?|file)://[^ ]*/debian/?( |$)' <<<"$sources" | head -n1 | tr -d ' ' || true
}
make_local_base() {
    command -v debootstrap >/dev/null 2>&1 || die "no registry answers and debootstrap is missing (apt-get install debootstrap)"
    [[ $(id -u) == 0 ]] || die "no registry answers, and making a Debian base with debootstrap needs root"
    local mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
    mirror=${mirror:-http://deb.debian.org/debian}
    say "making $LOCAL_BASE: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    if [[ "$mirror" == http://deb.debian.org/debian ]]; then  # debootstrap writes only the release itself
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
            "$mirror" "$mirror" "$mirror" >"$work/rootfs/etc/apt/sources.list"
    fi
    tar -C "$work/rootfs" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$work/rootfs"
}
base_note="pinned"
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base=$BASE_IMAGE
    base_note="given"
elif "$ENGINE" image inspect "$pinned" >/dev/null 2>&1 || timeout 120 "$ENGINE" pull -q "$pinned" >/dev/null 2>&1; then
    base=$pinned
else
    base=$LOCAL_BASE
    base_note="local Debian bookworm: $pinned could not be pulled"
    if ! "$ENGINE" image inspect "$base" >/dev/null 2>&1; then
        t0=$SECONDS
        make_local_base
        base_note+="; made in $((SECONDS - t0)) s"
    fi
fi
say "base image: $base ($base_note)"

# podman raises the containers' open-file and process limits by default; some kernels refuse that
# ("error setting rlimit type 7"). Then the containers get the host's limits, as Docker's do.
if [[ "$ENGINE" == podman && -z "${CONTAINERS_CONF:-}" ]] && ! "$ENGINE" run --rm "$base" true >/dev/null 2>&1; then
    printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
    export CONTAINERS_CONF="$work/containers.conf"
    say "podman: default_ulimits = [] (CONTAINERS_CONF=$CONTAINERS_CONF)"
    "$ENGINE" run --rm "$base" true || die "$ENGINE cannot run a container of $base"
fi

# --- the build ---------------------------------------------------------------------------------------------------
build=(build -f "$DOCKERFILE" -t "$IMAGE" --network=host --build-arg "BASE_IMAGE=$base")
# podman writes OCI images by default, which drop SHELL (the Dockerfiles' bash -o pipefail); Docker's format keeps it
if [[ "$ENGINE" == podman ]]; then build+=(--format docker); fi
if [[ "${NO_CACHE:-0}" == 1 ]]; then build+=(--no-cache); fi
wheels=${WHEELS:-${PIP_FIND_LINKS:-}}
if [[ -n "$wheels" && -d "$wheels" ]]; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >"$work/wheels.log" 2>&1 &
    server_pid=$!
    build+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/")
    say "wheels: $wheels on http://127.0.0.1:$port/"
fi
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST TORCH_CPU_INDEX; do
    if [[ -n "${!var:-}" ]]; then build+=(--build-arg "$var=${!var}"); fi
done
cert=${PIP_CERT:-${SSL_CERT_FILE:-}}
if [[ -n "$cert" && -s "$cert" ]]; then build+=(--secret "id=pip_cert,src=$cert"); fi

say "$ENGINE ${build[*]} ."
t0=$(date +%s)
"$ENGINE" "${build[@]}" . || { echo "error: the image did not build" >&2; exit 1; }
build_s=$(($(date +%s) - t0))
size_b=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
size=$(awk -v b="$size_b" 'BEGIN { printf "%.2f GB (%.0f bytes)", b / 1e9, b }')
say "built $IMAGE in ${build_s} s; size $size"

# --- the checks inside -------------------------------------------------------------------------------------------
# Mounted directories belong to the uid that runs in the container (what `--user $(id -u):$(id -g)` gives users).
# As root here we can hand them to the image's user (1000) and to a uid the image does not know (4242); as anyone
# else, every check runs as ourselves.
as_default=() as_other=(--user 4242:4242) owner_default=1000:1000 owner_other=4242:4242
if [[ $(id -u) != 0 ]]; then
    as_default=(--user "$(id -u):$(id -g)") as_other=(--user "$(id -u):$(id -g)")
    owner_default="" owner_other=""
fi
mount_dir() {  # mount_dir NAME OWNER -> a fresh host directory owned by OWNER
    mkdir -p "$work/$1"
    if [[ -n "$2" ]]; then chown "$2" "$work/$1"; fi
    echo "$work/$1"
}
run=("$ENGINE" run --rm --network=none)
declare -A result
failed=0
check() {  # check NAME COMMAND...: run, time, record
    local name=$1 t=$SECONDS
    shift
    say "check $name"
    if "$@"; then
        result[$name]="ok ($((SECONDS - t)) s)"
    else
        result[$name]="FAILED (exit $?, $((SECONDS - t)) s)"
        failed=1
    fi
}

demo_dir=$(mount_dir demo "$owner_default")
# shellcheck disable=SC2329  # called by check
demo() {
    "${run[@]}" "${as_default[@]}" -v "$demo_dir:$WS/runs" "$IMAGE" || return 1
    # the default command is the demo; its run and export must be on the host, in the mounted directory
    ls -ln "$demo_dir/demo/run/metrics.jsonl" "$demo_dir/demo/mixtral_hf/config.json"
}
check demo demo

tests_dir=$(mount_dir tests "$owner_other")
check tests "${run[@]}" "${as_other[@]}" -v "$tests_dir:$WS/runs" "$IMAGE" \
    python -m pytest -q -p no:cacheprovider -m "not gpu and not slow" --basetemp "$WS/runs/pytest" "${TESTS[@]}"

# sigterm: torchrun with two stand-in workers; `docker stop` must reach both before its SIGKILL timeout.
# shellcheck disable=SC2329  # called by check
sigterm() {
    local waited=0 dir
    dir=$(mount_dir sigterm "$owner_default")
    container=megatron-moe-sigterm-$$
    "$ENGINE" run -d --name "$container" --network=none "${as_default[@]}" -v "$dir:$WS/runs" "$IMAGE" \
        python -m torch.distributed.run --standalone --nproc-per-node 2 docker/sigterm_probe.py "$WS/runs/probe" \
        >/dev/null
    until [[ -s "$dir/probe/ready.0" && -s "$dir/probe/ready.1" ]]; do
        sleep 1
        waited=$((waited + 1))
        if ((waited > 180)); then
            "$ENGINE" logs "$container" | tail -n 20
            echo "the workers did not start in 180 s"
            return 1
        fi
    done
    local t=$SECONDS
    "$ENGINE" stop -t "$STOP_TIMEOUT" "$container" >/dev/null
    local stop_s=$((SECONDS - t)) code
    code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$container")
    "$ENGINE" logs "$container" 2>&1 | tail -n 3
    "$ENGINE" rm "$container" >/dev/null
    container=""
    echo "PID 1: $(cut -d' ' -f2 "$dir/probe/ready.0"); stop took ${stop_s} s (SIGKILL after ${STOP_TIMEOUT} s);" \
         "container exit code $code"
    cat "$dir"/probe/sigterm.* 2>/dev/null || true
    [[ -s "$dir/probe/sigterm.0" && -s "$dir/probe/sigterm.1" ]] && ((stop_s < STOP_TIMEOUT))
}
check sigterm sigterm

# sigterm-plain: a command without a SIGTERM handler ends at once on `docker stop` (exit 143 = 128 + SIGTERM),
# because tini, not the command, is PID 1 (a PID 1 ignores signals it has no handler for).
# shellcheck disable=SC2329  # called by check
sigterm_plain() {
    container=megatron-moe-sigterm-plain-$$
    "$ENGINE" run -d --name "$container" --network=none "$IMAGE" python -c "import time; time.sleep(600)" >/dev/null
    sleep 3
    local t=$SECONDS code
    "$ENGINE" stop -t "$STOP_TIMEOUT" "$container" >/dev/null
    local stop_s=$((SECONDS - t))
    code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$container")
    "$ENGINE" rm "$container" >/dev/null
    container=""
    echo "stop took ${stop_s} s, exit code $code"
    [[ "$code" == 143 ]] && ((stop_s < STOP_TIMEOUT))
}
check sigterm-plain sigterm_plain

# --- summary -----------------------------------------------------------------------------------------------------
say "summary ($engine_version, $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
echo "base:    $base ($base_note)"
echo "build:   ${build_s} s$([[ "${NO_CACHE:-0}" == 1 ]] && echo ' (no layer cache)')"
echo "image:   $IMAGE, $size"
for name in demo tests sigterm sigterm-plain; do
    echo "$name: ${result[$name]}"
done
exit "$failed"
