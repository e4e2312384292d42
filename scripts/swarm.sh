#!/usr/bin/env bash
# `make swarm-up` / `make swarm-down`: the stack of swarm.yaml on this machine's engine, as a
# swarm of one node (docs/several-servers.md says how three machines are prepared instead).
#
#   scripts/swarm.sh up      build the images, make the swarm if there is none, label this node
#                            for queue1..queue3, deploy, wait until every service runs
#   scripts/swarm.sh down    remove the stack (the journal volumes stay), and leave the swarm
#                            if `up` made it
#
# Settings: KESTRELQ_STACK (stack name, default kestrelq), KESTRELQ_IMAGE_TAG (default local),
# KESTRELQ_SWARM_WORKERS (worker tasks, default 3), KESTRELQ_SECRETS (default var/secrets).
set -euo pipefail

cd "$(dirname "$0")/.."
STACK="${KESTRELQ_STACK:-kestrelq}"
export KESTRELQ_IMAGE_TAG="${KESTRELQ_IMAGE_TAG:-local}"
export KESTRELQ_SECRETS="${KESTRELQ_SECRETS:-var/secrets}"
# Written when `up` made the swarm, so `down` leaves only a swarm it made.
MADE_MARKER=var/swarm/made-by-swarm-up
SERVERS=(queue1 queue2 queue3)
WAIT_S="${KESTRELQ_SWARM_WAIT_S:-300}"

log() { printf '[swarm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}'; }

build() {
    # The same images as compose.yaml (its queue and worker targets, tagged alike). A swarm
    # never builds: on several machines each node needs them (docs/several-servers.md).
    local target
    for target in queue worker; do
        log "building kestrelq-$target:$KESTRELQ_IMAGE_TAG"
        docker build -q -f images/Dockerfile --target "$target" \
            -t "kestrelq-$target:$KESTRELQ_IMAGE_TAG" . >/dev/null
    done
}

init_swarm() {
    case "$(swarm_state)" in
        active) log "this engine is already in a swarm: using it" ;;
        inactive)
            # Loopback: a swarm of this one machine, reachable from nowhere else.
            docker swarm init --advertise-addr 127.0.0.1 >/dev/null
            mkdir -p "$(dirname "$MADE_MARKER")"
            touch "$MADE_MARKER"
            log "made a one-node swarm (docker swarm leave --force undoes it; make swarm-down does)"
            ;;
        *) die "this engine's swarm state is '$(swarm_state)'" ;;
    esac
    [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] ||
        die "this node is not a swarm manager: run make swarm-up on a manager"
    # A server whose label no node carries yet goes to this one; on a swarm of several
    # machines labelled by hand (docs/several-servers.md) nothing changes.
    local labels=() s
    for s in "${SERVERS[@]}"; do
        if [ -z "$(docker node ls -q --filter "node.label=kestrelq.$s=true")" ]; then
            labels+=(--label-add "kestrelq.$s=true")
        fi
    done
    if ((${#labels[@]} > 0)); then
        docker node update "${labels[@]}" "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
        log "labelled this node: ${labels[*]}"
    fi
}

wait_running() {
    local deadline=$((SECONDS + WAIT_S)) line pending
    while :; do
        # "kestrelq_queue1 1/1": every service at its replica count.
        pending="$(docker service ls --filter "label=com.docker.stack.namespace=$STACK" \
            --format '{{.Name}} {{.Replicas}}' |
            awk '{split($2, r, "/"); if (r[1] != r[2] || r[2] == 0) print $1}')"
        [ -z "$pending" ] && break
        if ((SECONDS >= deadline)); then
            docker service ps --no-trunc "${STACK}_queue1" >&2 || true
            die "not running after ${WAIT_S}s: $pending"
        fi
        sleep 2
    done
    docker service ls --filter "label=com.docker.stack.namespace=$STACK"
}

up() {
    build
    init_swarm
    docker stack deploy --prune -c swarm.yaml "$STACK" 2>&1 |
        grep -v -e 'could not be accessed on a registry' -e 'its digest' \
            -e 'independently' -e 'different nodes' -e 'versions of the image' -e '^$' || true
    log "waiting until every service runs (queue servers: healthy)"
    wait_running
    cat <<EOF

The swarm stack is up: queue1..queue3 and the workers, on the overlay network ${STACK}_queues.
Send messages from a worker task (its environment has the server list and a login):
  docker exec \$(docker ps -q -f name=${STACK}_worker | head -1) python3 send.py hello
  docker service logs --follow ${STACK}_worker
Stats of every server:
  docker exec \$(docker ps -q -f name=${STACK}_worker | head -1) kestrelq stats
Stop: make swarm-down (the journal volumes stay).
EOF
}

down() {
    if [ "$(swarm_state)" != active ]; then
        log "this engine is in no swarm: nothing to remove"
        return
    fi
    docker stack rm "$STACK"
    # The network goes last, once every task is gone; leaving the swarm before would strand it.
    local deadline=$((SECONDS + WAIT_S))
    while docker network inspect "${STACK}_queues" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "network ${STACK}_queues still there after ${WAIT_S}s"
        sleep 1
    done
    if [ -e "$MADE_MARKER" ]; then
        docker swarm leave --force >/dev/null
        rm -f "$MADE_MARKER"
        log "left the swarm make swarm-up made"
    fi
    log "the journal volumes stay: docker volume ls --filter name=${STACK}_journal"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) die "usage: scripts/swarm.sh up|down" ;;
esac
