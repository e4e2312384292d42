#!/usr/bin/env bash
# Make sure the base image `debian:bookworm-slim` exists locally.
#
# Tries `docker pull` first (works where a registry is reachable); where it is not, builds the
# same thing from Debian's mirror: the official slim image is itself a minbase debootstrap, so
# the Dockerfiles stay the normal `FROM debian:bookworm-slim`. Idempotent: an image already
# present is kept.
#
# Usage: scripts/base-image.sh [IMAGE]     (default debian:bookworm-slim; needs root + debootstrap)
set -euo pipefail

IMAGE="${1:-debian:bookworm-slim}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PULL_TIMEOUT_S="${PULL_TIMEOUT_S:-60}"

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE is already present"
    exit 0
fi

log "trying docker pull $IMAGE (at most ${PULL_TIMEOUT_S}s)"
if timeout "$PULL_TIMEOUT_S" docker pull -q "$IMAGE" >/dev/null 2>&1; then
    log "pulled $IMAGE"
    exit 0
fi

log "pull failed; building $IMAGE with debootstrap from $MIRROR"
if ! command -v debootstrap >/dev/null 2>&1; then
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q debootstrap
fi
rootfs="$(mktemp -d "${TMPDIR:-/tmp}/kestrelq-rootfs.XXXXXX")"
trap 'as_root rm -rf "$rootfs"' EXIT
start=$SECONDS
as_root debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    die "debootstrap failed (full log: $rootfs.log)"
}
# What the official image's build (debuerreotype) adds for containers: a policy-rc.d that stops
# package scripts from starting services during `docker build` (supervisor's would start a
# daemon), and apt settings that keep images small. Lists and caches are dropped: every
# Dockerfile runs `apt-get update` anyway.
printf '#!/bin/sh\nexit 101\n' | as_root tee "$rootfs/usr/sbin/policy-rc.d" >/dev/null
as_root chmod 755 "$rootfs/usr/sbin/policy-rc.d"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' |
    as_root tee "$rootfs/etc/apt/apt.conf.d/docker-no-recommends" >/dev/null
printf 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' |
    as_root tee "$rootfs/etc/apt/apt.conf.d/docker-no-cache" >/dev/null
as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
as_root tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV LANG=C.UTF-8' \
    - "$IMAGE" >/dev/null
rm -f "$rootfs.log"
log "built $IMAGE in $((SECONDS - start))s: $(docker image inspect --format '{{.Id}}' "$IMAGE")"
