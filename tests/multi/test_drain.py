"""Draining one of three servers while a producer and a pool of workers run, then putting it
back: `kestrelq drain` and `kestrelq undrain` as an operator runs them.

Proves: once the server is READONLY no message is stored on it; the workers empty it; the drain
command returns only when it is empty; nothing acknowledged is lost; after `undrain` the
producer sends to it again.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from helpers import ServerProcess, child_env, wait_until
from pool import handled, start_workers, stop_workers

from kestrelq.client import Client
from kestrelq.credentials import Credentials
from kestrelq.producer import Producer

WORKERS = 2


def left(port: int) -> tuple[int, int]:
    with Client("127.0.0.1", port, timeout=10) as client:
        stats = client.dump_stats("work").get("work", {})
    return int(stats.get("items", "0")), int(stats.get("open_transactions", "0"))


def kestrelq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kestrelq", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )


def test_drain_a_server_under_load_and_bring_it_back(
    three: list[ServerProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kestrelq.producer")
    listing = ",".join(f"127.0.0.1:{s.port}" for s in three)
    victim = three[1]
    log = tmp_path / "handled.log"
    workers = start_workers(tmp_path, listing, WORKERS, 200, log)
    acked: list[tuple[str, int]] = []  # (id, port that stored it), in order
    failures: list[BaseException] = []
    stop = threading.Event()
    producer = Producer(listing, credentials=Credentials(), backoff_max_s=1.0)

    def produce() -> None:
        try:
            with producer:
                while not stop.is_set():
                    msg_id = uuid.uuid4().hex
                    body = json.dumps({"task": "echo", "args": {"text": "x"}, "id": msg_id})
                    acked.append((msg_id, producer.send("work", body.encode())[1]))
        except BaseException as exc:
            failures.append(exc)

    def on_victim(start: int = 0) -> int:
        return sum(1 for _, port in acked[start:] if port == victim.port)

    sender = threading.Thread(target=produce)
    try:
        sender.start()
        wait_until(lambda: on_victim() >= 50 and len(handled(log)) >= 50, 120, what="under way")
        drained = kestrelq("drain", f"127.0.0.1:{victim.port}", "--poll-s", "0.2")
        assert drained.returncode == 0, drained.stderr
        assert "READONLY" in drained.stdout and "drained in" in drained.stdout, drained.stdout
        assert left(victim.port) == (0, 0)
        # Drained: the producer goes on over the two others, and the victim stays empty.
        after_drain = len(acked)
        wait_until(lambda: len(acked) >= after_drain + 200, 120, what="sends after the drain")
        assert on_victim(after_drain) == 0
        assert left(victim.port) == (0, 0)
        assert "is draining (server is read-only)" in caplog.text
        # Back: the producer's backoff (1 s at most here) passes and it stores there again.
        undrained = kestrelq("undrain", f"127.0.0.1:{victim.port}")
        assert undrained.returncode == 0, undrained.stderr
        assert "UP" in undrained.stdout
        after_undrain = len(acked)
        wait_until(lambda: on_victim(after_undrain) >= 20, 120, what="the victim back in turn")
        stop.set()
        sender.join(120)
        assert not sender.is_alive() and not failures, failures
        wait_until(
            lambda: {i for i, _ in acked} <= set(handled(log)), 300, interval_s=0.2,
            what="every acknowledged message handled",
        )  # fmt: skip
        wait_until(lambda: all(left(s.port) == (0, 0) for s in three), 60, what="all empty")
    finally:
        stop.set()
        sender.join(120)
        stop_workers(workers)
    assert [w.returncode for w in workers] == [0] * WORKERS


def test_drain_of_a_server_nobody_reads_gives_up_and_says_what_is_left(
    three: list[ServerProcess],
) -> None:
    with Client("127.0.0.1", three[0].port) as client:
        client.set("orphans", b"x")
        client.set("orphans", b"y")
    result = kestrelq("drain", f"127.0.0.1:{three[0].port}", "--wait-s", "0.5", "--poll-s", "0.1")
    assert result.returncode == 1
    assert "2 items and 0 open reads left in 1 queues (orphans)" in result.stdout
    assert "not drained after 0.5 s; it stays READONLY" in result.stderr
    with Client("127.0.0.1", three[0].port) as client:
        assert client.status().value == "READONLY"
        assert client.get("orphans") is not None  # still served
    assert kestrelq("undrain", f"127.0.0.1:{three[0].port}").returncode == 0
    assert kestrelq("drain", "nohost:notaport").returncode == 2
