#!/usr/bin/env bash
# Build (and with PUSH=1 push) the images: docker/build.sh [cpu] [gpu] [mlflow]  (default: all three).
# `make images` / `make push` call it. Run from anywhere; the build context is the repository root.
#
# Environment (all optional):
#   ENGINE=docker|podman    default: $DOCKER, else podman, else docker
#   REGISTRY, TAG           image names $REGISTRY/lesion-pipeline[-gpu]:$TAG and $REGISTRY/lesion-mlflow:$TAG
#                           (defaults: the names pipeline/config.py uses)
#   BASE=auto|python|debian|IMAGE
#                           the Python base: python = python:3.11.x-slim-bookworm (the Dockerfiles'
#                           default), debian = one made from Debian's packages (docker/debian-base.sh),
#                           auto (default) = python where it can be pulled, else debian
#   BUILD_CA_BUNDLE=FILE    a CA bundle pip needs to reach its index (a TLS-inspecting proxy)
#   BUILD_PIP_CONF=FILE     a pip config for the build (a mirror: index-url = ...); it finds the CA
#                           bundle above at /run/secrets/pip_ca
#   BUILD_FLAGS             extra build flags, e.g. --platform linux/amd64
#   FORCE=1                 build even when the image was built from the same sources
#   DRY_RUN=1               print the build and push commands instead of running them
# Both files reach the builds as build secrets: no layer and no image holds them.
# A build is skipped when an image of that name carries the label lesion.source-hash of the
# same sources (the files the image copies, its Dockerfile and the base image's id); layers and
# pip's download cache (a build cache mount) make the rest of a rebuild fast.
# A pushed image's registry digest is recorded in build/image-digests.json (pipeline/images.py)
# for compile, submit and schedule to pin; a local build records none (its digest names no
# image a cluster can pull, and local runs use the tag).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

ENGINE="${ENGINE:-${DOCKER:-$(basename "$(command -v podman || command -v docker || echo docker)")}}"
if [[ -z "${DRY_RUN:-}" ]] && ! command -v "$ENGINE" >/dev/null; then
    echo "build.sh: no container engine: install Docker or Podman (or set ENGINE)" >&2
    exit 1
fi
REGISTRY="${REGISTRY:-ghcr.io/lesion-pipeline}"
TAG="${TAG:-$(sed -n 's/^version *= *//p' setup.cfg)}"
DEFAULT_BASE="$(sed -n 's/^ARG PYTHON_IMAGE=//p' docker/Dockerfile)"
HASH_LABEL=lesion.source-hash

read -r -a EXTRA_FLAGS <<<"${BUILD_FLAGS:-}"
ENGINE_FLAGS=()
if [[ "$(basename "$ENGINE")" == podman ]]; then
    # chroot isolation and the host's network: what rootful Podman inside a container can do.
    ENGINE_FLAGS=(--isolation=chroot --network=host)
else
    export DOCKER_BUILDKIT=1  # cache and secret mounts
fi

base_image() {
    [[ -z "${DRY_RUN:-}" ]] || BASE="${BASE/auto/python}"
    case "${BASE:-auto}" in
    python) echo "$DEFAULT_BASE" ;;
    debian) "$ROOT/docker/debian-base.sh" ;;
    auto)
        if "$ENGINE" image inspect "$DEFAULT_BASE" >/dev/null 2>&1 || "$ENGINE" pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
            echo "$DEFAULT_BASE"
        else
            echo "build.sh: $DEFAULT_BASE cannot be pulled; using a base made from Debian's packages" >&2
            "$ROOT/docker/debian-base.sh"
        fi
        ;;
    *) echo "$BASE" ;;
    esac
}

# The build secrets: the caller's files, or empty ones (pip ignores an empty config).
SECRETS="$(mktemp -d)"
trap 'rm -rf "$SECRETS"' EXIT
: >"$SECRETS/pip.conf"
: >"$SECRETS/ca.crt"
[[ -n "${BUILD_CA_BUNDLE:-}" ]] && cp "$BUILD_CA_BUNDLE" "$SECRETS/ca.crt"
if [[ -n "${BUILD_PIP_CONF:-}" ]]; then
    cp "$BUILD_PIP_CONF" "$SECRETS/pip.conf"
elif [[ -n "${BUILD_CA_BUNDLE:-}" ]]; then
    printf '[global]\ncert = /run/secrets/pip_ca\n' >"$SECRETS/pip.conf"
fi

image_name() {
    case "$1" in
    cpu) echo "$REGISTRY/lesion-pipeline:$TAG" ;;
    gpu) echo "$REGISTRY/lesion-pipeline-gpu:$TAG" ;;
    mlflow) echo "$REGISTRY/lesion-mlflow:$TAG" ;;
    *) echo "build.sh: unknown image $1 (cpu, gpu, mlflow)" >&2 && exit 2 ;;
    esac
}

# What each image is made of (its Dockerfile's COPY sources), for the source hash.
image_inputs() {
    case "$1" in
    cpu) echo docker/Dockerfile pyproject.toml setup.cfg README.md constraints.txt components pipeline ;;
    gpu) echo docker/Dockerfile.gpu docker/constraints-gpu.txt pyproject.toml setup.cfg README.md constraints.txt components pipeline ;;
    mlflow) echo docker/Dockerfile.mlflow constraints.txt docker/mlflow-server-requirements.txt ;;
    esac
}

dockerfile() {
    case "$1" in cpu) echo docker/Dockerfile ;; *) echo "docker/Dockerfile.$1" ;; esac
}

source_hash() {
    local base_id="$1"
    shift
    # shellcheck disable=SC2046
    {
        echo "$base_id"
        find $(image_inputs "$@") -type f ! -name '*.py[cod]' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

build_one() {
    local which="$1" name base base_id hash built
    name="$(image_name "$which")"
    base="$(base_image)"
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "$ENGINE" build "${ENGINE_FLAGS[@]}" "${EXTRA_FLAGS[@]}" --build-arg "PYTHON_IMAGE=$base" -f "$(dockerfile "$which")" -t "$name" .
        return
    fi
    base_id="$("$ENGINE" image inspect --format '{{.Id}}' "$base" 2>/dev/null || echo "$base")"
    hash="$(source_hash "$base_id" "$which")"
    built="$("$ENGINE" image inspect --format "{{index .Config.Labels \"$HASH_LABEL\"}}" "$name" 2>/dev/null || true)"
    if [[ -z "${FORCE:-}" && "$built" == "$hash" ]]; then
        echo "build.sh: $name is up to date (sources $hash)" >&2
    else
        echo "build.sh: building $name from $base" >&2
        local start=$SECONDS
        "$ENGINE" build "${ENGINE_FLAGS[@]}" "${EXTRA_FLAGS[@]}" \
            --secret "id=pip_conf,src=$SECRETS/pip.conf" --secret "id=pip_ca,src=$SECRETS/ca.crt" \
            --build-arg "PYTHON_IMAGE=$base" --build-arg "SOURCE_HASH=$hash" --label "$HASH_LABEL=$hash" \
            -f "$(dockerfile "$which")" -t "$name" .
        echo "build.sh: built $name in $((SECONDS - start)) s" >&2
    fi
}

push_one() {
    local name
    name="$(image_name "$1")"
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "$ENGINE" push "$name"
        return
    fi
    "$ENGINE" push "$name"
    # The registry's digest of what was pushed: what a compiled pipeline can pin.
    python3 -m pipeline.images record "$name" "$("$ENGINE" image inspect --format '{{index .RepoDigests 0}}' "$name")"
}

IMAGES=("$@")
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(cpu gpu mlflow)
for which in "${IMAGES[@]}"; do
    build_one "$which"
    [[ -z "${PUSH:-}" ]] || push_one "$which"
done
