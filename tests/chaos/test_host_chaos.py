"""Host chaos: real supervisord runs the rendered stack while processes are killed.

Invariant (Jepsen's total queue): every message that got STORED is handled at least once.
Duplicates are allowed (a worker killed mid-task, or a queue killed before a confirm reached
its journal, means a redelivery) and reported, losses are not. Handled ids come from the
demo tasks' $KESTRELQ_HANDLED_LOG (one `start`/`done <id> <pid>` line per event, O_APPEND).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from helpers import Supervisord, render_test_stack, request, wait_until
from producer import Sender
from pymemcache.client.base import Client

pytestmark = pytest.mark.chaos

QUEUE = "queue:queue"


@dataclass
class Stack:
    sup: Supervisord
    port: int
    root: Path
    handled: Path
    workers: list[str]

    def events(self, event: str) -> Counter[str]:
        if not self.handled.exists():
            return Counter()
        lines = self.handled.read_text().splitlines()
        return Counter(line.split()[1] for line in lines if line.startswith(event + " "))

    def client(self) -> Client:
        return Client(("127.0.0.1", self.port), timeout=5, connect_timeout=2)

    def send(self, *envelopes: dict[str, Any]) -> None:
        client = self.client()
        try:
            for envelope in envelopes:
                assert client.set("work", json.dumps(envelope).encode(), noreply=False)
        finally:
            client.close()

    def restart_after_kill(self, name: str) -> tuple[int, int]:
        """kill -9 a RUNNING program; wait until supervisord runs it again. (old, new) pid."""
        before = wait_until(lambda: self.sup.running(name), 30, what=f"{name} RUNNING")
        assert before is not None
        old: int = before["pid"]
        os.kill(old, signal.SIGKILL)
        after = wait_until(
            lambda: self.sup.running(name, not_pid=old), 30, what=f"{name} restarted"
        )
        assert after is not None
        new: int = after["pid"]
        return old, new


def queue_answers(port: int) -> bool:
    try:
        return request(port, b"version\r\n", timeout_s=2).startswith(b"VERSION ")
    except OSError:
        return False


def start_stack(root: Path, workers: int) -> Stack:
    conf, stack = render_test_stack(root, workers=workers)
    handled = root / "handled.log"
    sup = Supervisord(
        conf / "supervisord.conf",
        stack.http_port,
        root / "supervisord.out",
        KESTRELQ_HANDLED_LOG=str(handled),
    ).wait_ready()
    names = [f"work_worker:work_worker_{n:02d}" for n in range(workers)]
    for name in [QUEUE, *names]:
        wait_until(partial(sup.running, name), 30, what=f"{name} RUNNING")
    # RUNNING only means "up for startsecs"; ready means it answers (the readiness contract).
    wait_until(partial(queue_answers, stack.port), 30, what="the queue to answer version")
    return Stack(sup, stack.port, root, handled, names)


@pytest.fixture
def stack4(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path, workers=4)
    try:
        yield s
    finally:
        s.sup.stop()


@pytest.fixture
def stack1(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path, workers=1)
    try:
        yield s
    finally:
        s.sup.stop()


@dataclass(eq=False)  # a Thread must stay hashable
class Producer(threading.Thread):
    """Sends `count` task envelopes at about `rate_per_s`, retrying each until STORED."""

    port: int
    count: int
    rate_per_s: float
    stored: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    errors: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="producer", daemon=True)
        self.halt = threading.Event()

    def run(self) -> None:
        sender = Sender("127.0.0.1", self.port, "work")
        try:
            for i in range(self.count):
                if self.halt.is_set():
                    return
                self._send_one(sender, f"m{i:05d}")
                self.halt.wait(1 / self.rate_per_s)  # pacing, so kills land mid-stream
        finally:
            sender.close()

    def _send_one(self, sender: Sender, mid: str) -> None:
        body = json.dumps({"task": "sleep", "args": {"seconds": 0.002}, "id": mid}).encode()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.halt.is_set():
            outcome = sender.send(body)
            if outcome == "STORED":
                self.stored.append(mid)
                return
            if outcome == "REFUSED":
                self.refused += 1  # NOT_STORED while the server shuts down: try again
            else:
                # The reply was lost: it may or may not be stored. Sent again below, so a
                # duplicate is possible; the id counts as STORED once the retry says so.
                self.errors += 1
            self.halt.wait(0.05)  # the queue is restarting; supervisord brings it back
        self.uncertain.append(mid)


@pytest.mark.timeout(240)
def test_kill_queue_and_workers_while_messages_flow_nothing_stored_is_lost(
    stack4: Stack,
) -> None:
    s = stack4
    rng = random.Random(5)
    producer = Producer(s.port, count=3000, rate_per_s=250)
    started = time.monotonic()
    producer.start()
    kills: list[tuple[str, int, int]] = []
    try:
        for round_no in range(12):  # bounded; normally ends when the producer is done
            if not producer.is_alive():
                break
            victims = rng.sample(s.workers, 2)
            if round_no % 2 == 0:
                victims.append(QUEUE)
            for name in victims:
                old, new = s.restart_after_kill(name)
                assert new != old
                kills.append((name, old, new))
            threading.Event().wait(rng.uniform(0.2, 0.8))  # let messages flow between kills
    finally:
        producer.join(120)
        producer.halt.set()
    assert not producer.is_alive()
    assert producer.uncertain == [], "the producer gave up on messages"

    stored = set(producer.stored)
    assert len(stored) == 3000
    wait_until(lambda: stored <= set(s.events("done")), 120, what="every STORED id handled")
    done = s.events("done")
    duplicates = {mid: n for mid, n in done.items() if n > 1}
    elapsed_s = time.monotonic() - started

    queue_kills = sum(1 for name, _, _ in kills if name == QUEUE)
    worker_kills = len(kills) - queue_kills
    assert queue_kills >= 3, kills
    assert worker_kills >= 6, kills
    for info in s.sup.all_info():
        assert info["statename"] == "RUNNING", info
    assert not (s.root / "var/host/run/FATAL").exists(), "a program went FATAL"
    print(
        f"\nhost chaos: {len(stored)} STORED, all handled; {len(duplicates)} handled more than"
        f" once ({sum(duplicates.values()) - len(duplicates)} extra runs); kill -9: queue"
        f" {queue_kills}x, workers {worker_kills}x, each restarted by supervisord;"
        f" producer retries {producer.errors}, NOT_STORED {producer.refused};"
        f" {elapsed_s:.1f}s"
    )


@pytest.mark.timeout(120)
def test_stopping_a_worker_mid_task_finishes_and_confirms_it(stack1: Stack) -> None:
    s = stack1
    (name,) = s.workers
    s.send({"task": "sleep", "args": {"seconds": 2}, "id": "slow-1"})
    wait_until(lambda: s.events("start")["slow-1"], 60, what="the slow task to start")
    # supervisord's own stop: stopsignal=TERM, then up to stopwaitsecs before SIGKILL.
    assert s.sup.call("stopProcess", name) is True
    info = s.sup.info(name)
    assert (info["statename"], info["exitstatus"]) == ("STOPPED", 0)
    assert s.events("done")["slow-1"] == 1, "the task finished before the worker exited"
    log = (s.root / "var/host/log/work_worker_00.log").read_text()
    assert "stopped (warm): processed=1 failed=0 redelivered=0" in log

    assert s.sup.call("startProcess", name) is True
    # A message sent after it: if slow-1 had gone back to the queue it would be at the head
    # and handled first. The fresh worker handles only the new one.
    s.send({"task": "echo", "args": {"text": "after"}, "id": "after-1"})
    wait_until(lambda: s.events("done")["after-1"], 60, what="the next message")
    assert s.events("start")["slow-1"] == 1, "slow-1 was confirmed, so it is never redone"


@pytest.mark.timeout(120)
def test_poison_message_ends_in_the_dead_letter_queue_while_others_flow(stack4: Stack) -> None:
    s = stack4
    s.send({"task": "fail", "args": {"reason": "poison"}, "id": "poison-1"})
    s.send(*({"task": "echo", "args": {"text": str(n)}, "id": f"ok-{n}"} for n in range(200)))
    wait_until(
        lambda: all(s.events("done")[f"ok-{n}"] for n in range(200)),
        60,
        what="every good message handled",
    )
    client = s.client()
    try:
        dead = wait_until(lambda: client.get("work_dead"), 30, what="the dead-letter queue")
    finally:
        client.close()
    assert json.loads(dead)["id"] == "poison-1"
    # conf/stack.toml: max_deliveries = 5 for queue work.
    assert s.events("start")["poison-1"] == 5
    assert s.events("done")["poison-1"] == 0
