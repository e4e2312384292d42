"""Three servers, one producer, a pool of workers, and one server killed (kill -9) and restarted
in the middle: every message that got STORED is handled (Jepsen's total queue invariant).

Duplicates are allowed and reported (a retry after a lost STORED, a confirm lost with the
killed server); losses are not.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from helpers import ServerProcess, wait_until
from pool import handled, start_workers, stop_workers

from kestrelq.client import Client
from kestrelq.credentials import Credentials
from kestrelq.producer import Producer, Unreachable

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

MESSAGES = 10_000
WORKERS = 3


def items_left(port: int) -> int:
    with Client("127.0.0.1", port, timeout=10) as client:
        stats = client.dump_stats("work").get("work", {})
    return int(stats.get("items", "0")) + int(stats.get("open_transactions", "0"))


def test_ten_thousand_messages_none_lost_while_a_server_is_killed_and_restarted(
    tmp_path: Path,
) -> None:
    servers = [ServerProcess(tmp_path / f"data{i}").start() for i in range(3)]
    listing = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    log = tmp_path / "handled.log"
    workers = start_workers(tmp_path, listing, WORKERS, 500, log)
    acked: list[str] = []
    stored_on: list[int] = []
    failures: list[BaseException] = []
    # The producer waits here at 70% until the killed server is back, so that the last 30%
    # meet it again whatever the machine's speed.
    gate = threading.Event()
    producer = Producer(listing, credentials=Credentials(), backoff_max_s=1.0)

    def produce() -> None:
        try:
            with producer:
                for n in range(MESSAGES):
                    if n == MESSAGES * 7 // 10:
                        gate.wait(300)
                    msg_id = uuid.uuid4().hex
                    body = json.dumps({"task": "echo", "args": {"text": "x"}, "id": msg_id})
                    while True:
                        try:
                            stored_on.append(producer.send("work", body.encode())[1])
                            break
                        except Unreachable:  # never expected with two servers up; retried
                            continue
                    acked.append(msg_id)
        except BaseException as exc:
            failures.append(exc)

    sender = threading.Thread(target=produce)
    victim = servers[1]
    try:
        sender.start()
        wait_until(lambda: len(acked) >= MESSAGES * 3 // 10, 300, what="30% acknowledged")
        wait_until(lambda: len(handled(log)) >= 500, 300, what="workers under way")
        victim.kill()
        killed_at = len(acked)
        wait_until(lambda: len(acked) >= killed_at + MESSAGES // 5, 300, what="sends go on")
        victim.start()
        wait_until(lambda: producer.rotation.available(("127.0.0.1", victim.port)), 60,
                   what="the producer's backoff for the restarted server to pass")  # fmt: skip
        gate.set()
        sender.join(600)
        assert not sender.is_alive() and not failures, failures
        assert len(acked) == MESSAGES
        wait_until(
            lambda: set(acked) <= set(handled(log)), 600, interval_s=0.5,
            what="every acknowledged message handled",
        )  # fmt: skip
        wait_until(lambda: sum(items_left(s.port) for s in servers) == 0, 60, what="all empty")
    finally:
        stop_workers(workers)
        for s in servers:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
    done = handled(log)
    lost = set(acked) - set(done)
    duplicates = sum(n - 1 for n in done.values())
    print(f"acked {len(acked)} handled {len(done)} lost {len(lost)} duplicates {duplicates}")
    assert not lost
    assert victim.port in stored_on[: MESSAGES * 3 // 10], "the victim had messages when killed"
    assert victim.port in stored_on[MESSAGES * 7 // 10 :], "the producer went back to it"
    down = stored_on[killed_at + 10 : killed_at + MESSAGES // 5 - 10]  # sent before the restart
    assert victim.port not in down, "stored on a killed server"
    assert [w.returncode for w in workers] == [0] * WORKERS
