#!/usr/bin/env bash
# A Python 3.11 base image made from Debian's own packages, for machines that cannot pull
# python:3.11-slim-bookworm (no Docker Hub). Debian bookworm's python3 is 3.11, the same
# minor release as the default base; build the images on it with
#   docker/build.sh --base "$(docker/debian-base.sh)"      (or: make images BASE=debian)
# Needs root, debootstrap and a Debian mirror (MIRROR, default deb.debian.org); prints the
# image's name. Makes nothing when the image is already there (FORCE=1 makes it again).
set -euo pipefail
ENGINE="${ENGINE:-$(command -v podman || command -v docker)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
ROOTFS_IMAGE="localhost/debian-minbase:$SUITE"
IMAGE="${IMAGE:-localhost/python:3.11-debian-$SUITE}"
BUILD_FLAGS=()
[[ "$(basename "$ENGINE")" == podman ]] && BUILD_FLAGS=(--isolation=chroot --network=host)

if [[ -z "${FORCE:-}" ]] && "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi
if ! "$ENGINE" image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1 || [[ -n "${FORCE:-}" ]]; then
    command -v debootstrap >/dev/null || { echo "debian-base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >&2
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$ENGINE" import - "$ROOTFS_IMAGE" >&2
fi
# python, python3 and the venv module where the python:*-slim images have them; nothing else.
"$ENGINE" build "${BUILD_FLAGS[@]}" -t "$IMAGE" - >&2 <<DOCKERFILE
FROM $ROOTFS_IMAGE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
       python3 python3-venv python-is-python3 ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
DOCKERFILE
echo "$IMAGE"
