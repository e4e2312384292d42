"""The swarm stack (swarm.yaml) on a real swarm of three nodes: lose a node, drain a server.

Both tests hold the stack to what producers were told: every message acknowledged (STORED by
some server) is handled by a worker, counted in what the workers record on every node. Duplicates
are allowed (delivery is at least once) and reported.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from helpers import wait_until
from nodes import SERVERS, Swarm

pytestmark = [pytest.mark.timeout(1500)]

KILLED = 2  # index of node3, which holds queue3 and a worker, and is not the manager
# Messages on a queue no worker reads, put on queue3 only: still there after node3's return,
# they show that its server came back with its journal.
KEPT = 20


def _stored_after(producer_lines: list[str], mark: int) -> int:
    return sum(1 for line in producer_lines[mark:] if line.startswith("STORED "))


def _missing(stored: list[str], handled: Counter[str]) -> list[str]:
    return [m for m in stored if m not in handled]


def _wait_all_handled(swarm: Swarm, stored: list[str]) -> None:
    missing = stored
    deadline = time.monotonic() + 300
    while missing and time.monotonic() < deadline:
        missing = _missing(stored, swarm.handled())
        time.sleep(2)
    assert missing == [], f"{len(missing)} acknowledged messages never handled: {missing[:20]}"


def test_a_node_killed_mid_flow_loses_no_acknowledged_message(swarm: Swarm) -> None:
    node3 = swarm.nodes[KILLED]
    kept = swarm.producer("kept", KEPT, "--queue", "kept", servers="queue3")
    assert kept.wait(300) == 0
    assert len(kept.ids("STORED")) == KEPT, kept.lines
    assert swarm.queue_items("queue3", "kept") == KEPT

    producer = swarm.producer("kill", 1500, "--interval-ms", "15")
    wait_until(lambda: len(producer.ids("STORED")) >= 200, 300, what="200 messages stored")
    survivors = swarm.nodes[:KILLED]

    def survivors_handle() -> bool:
        return any(m.startswith("kill-") for m in swarm.handled(survivors))

    # Where the workers run is the scheduler's choice: this says it when none runs there.
    wait_until(survivors_handle, 300, what=f"a worker on node1 or node2 handling messages "
               f"(workers on {swarm.running_on('worker')})")  # fmt: skip
    before_kill = swarm.handled()
    lines_at_kill = len(producer.lines)
    killed_at = time.monotonic()
    swarm.kill(node3)

    # Producers go on over queue1 and queue2; workers on node1 and node2 go on handling.
    wait_until(lambda: _stored_after(producer.lines, lines_at_kill) >= 300, 300,
               what="300 more messages stored with node3 down")  # fmt: skip
    swarm.timings.append(("300 messages stored after the kill", time.monotonic() - killed_at))
    stored_on = Counter(line.split()[2] for line in producer.lines[lines_at_kill:]
                        if line.startswith("STORED "))  # fmt: skip
    assert set(stored_on) <= {"queue1:22133", "queue2:22133", "queue3:22133"}
    assert stored_on["queue1:22133"] > 0 and stored_on["queue2:22133"] > 0, stored_on
    during = swarm.handled(survivors)
    handled_before_on_survivors = sum(
        n for m, n in before_kill.items() if m in during and m.startswith("kill-")
    )
    assert sum(n for m, n in during.items() if m.startswith("kill-")) > (
        handled_before_on_survivors
    ), "no worker on node1 or node2 handled anything while node3 was down"

    swarm.restart(node3)
    back_at = time.monotonic()
    wait_until(lambda: swarm.running_on("queue3") == ["node3"], 300,
               what="queue3 running on node3 again")  # fmt: skip
    swarm.timings.append(("node3 started -> queue3 running there", time.monotonic() - back_at))
    assert producer.wait(600) == 0
    stored = producer.ids("STORED")
    assert producer.ids("FAILED") == [], "a message no server took: every server failed"
    assert swarm.queue_items("queue3", "kept") == KEPT, "queue3 came back without its journal"

    _wait_all_handled(swarm, stored)
    handled = swarm.handled()
    duplicates = sum(n - 1 for m, n in handled.items() if m.startswith("kill-") and n > 1)
    print(f"stored {len(stored)}, handled {len(handled)} distinct, {duplicates} duplicates")
    swarm.wait_running()


def test_a_drained_server_is_removed_with_nothing_lost(swarm: Swarm) -> None:
    """`kestrelq drain queue2` while a producer sends: it ends empty, then its service goes."""
    swarm.all_nodes_up()
    producer = swarm.producer("drain", 1200, "--interval-ms", "15")
    wait_until(lambda: len(producer.ids("STORED")) >= 150, 300, what="150 messages stored")
    started = time.monotonic()
    drained = swarm.kestrelq("drain", "queue2:22133", "--wait-s", "300")
    swarm.timings.append(("drain of queue2 under load", time.monotonic() - started))
    assert drained.returncode == 0, drained.stdout.decode() + drained.stderr.decode()
    lines_at_drain = len(producer.lines)
    # Drained: nothing left on it; its health check still passed meanwhile (no restart).
    assert swarm.queue_items("queue2", "work") == 0
    assert swarm.replicas()["queue2"] == (1, 1)
    swarm.on(swarm.nodes[0], "service", "rm", "kestrelq_queue2")
    assert producer.wait(600) == 0
    stored = producer.ids("STORED")
    assert producer.ids("FAILED") == []
    after = [line.split()[2] for line in producer.lines[lines_at_drain:]
             if line.startswith("STORED ")]  # fmt: skip
    assert after, "the producer stopped before the drain ended: nothing to look at"
    assert "queue2:22133" not in after, Counter(after)
    _wait_all_handled(swarm, stored)
    assert set(swarm.replicas()) == {*SERVERS, "worker"} - {"queue2"}
