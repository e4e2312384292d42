"""The worker loop against a real queue server: confirm, abort, dead letters, reconnects."""

from __future__ import annotations

import inspect
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from helpers import ServerProcess, free_port, wait_until
from pymemcache.client.base import Client

from kestrelq.worker import Worker
from kestrelq.worker.message import MessageInfo
from kestrelq.worker.registry import HandlerNotFound, resolve
from kestrelq.worker.runtime import Handler, backoff_delay_s


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    c = Client(("127.0.0.1", server.port), timeout=10, connect_timeout=5)
    yield c
    c.close()


def make_worker(port: int, handler: Handler, **kwargs: Any) -> Worker:
    opts: dict[str, Any] = {
        "port": port,
        "wait_ms": 200,
        "burst": True,
        "handle_signals": False,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.2,
        "retry_delay_s": 0.01,
    }
    opts.update(kwargs)
    return Worker("work", handler, **opts)


# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "expected_s"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (50, 5.0)],
)
def test_backoff_doubles_and_is_capped(attempt: int, expected_s: float) -> None:
    assert backoff_delay_s(attempt, 0.1, 5.0) == pytest.approx(expected_s)


def test_resolve_finds_dotted_attributes() -> None:
    assert resolve("os.path:join") is __import__("os").path.join
    assert resolve("os:path.basename")("/a/b") == "b"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("nocolon", "must look like module:function", id="no-colon"),
        pytest.param("no_such_module_xyz:f", "cannot import module", id="no-module"),
        pytest.param("os:no_such_attr", "has no attribute", id="no-attr"),
        pytest.param("os:sep", "is not callable", id="not-callable"),
    ],
)
def test_resolve_errors_are_clear(spec: str, message: str) -> None:
    with pytest.raises(HandlerNotFound, match=message):
        resolve(spec)


def test_second_stop_request_is_cold() -> None:
    worker = make_worker(1, print)
    worker.request_stop()
    assert (worker._stop, worker._cold) == (True, False)
    worker.request_stop()
    assert worker._cold


def test_an_alarm_landing_while_a_failure_is_being_caught_does_not_crash_the_worker() -> None:
    # The handler raised and its time limit passed just then: SIGALRM's handler runs while
    # _run_handler's except clause records the failure. A real signal lands there only by
    # chance, so the alarm is delivered from a trace function at that very line instead.
    def handler(body: bytes) -> None:
        while time.monotonic() <= (worker._task_deadline or 0):  # past its limit first
            pass
        raise ValueError("boom")

    worker = make_worker(1, handler)
    code = worker._run_handler.__func__.__code__  # type: ignore[attr-defined]
    lines, first = inspect.getsourcelines(code)
    target = first + next(i for i, line in enumerate(lines) if line.strip() == "error = exc")
    fired: list[int] = []

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code is not code:
            return None
        if event == "line" and frame.f_lineno == target and not fired:
            fired.append(target)
            worker._on_alarm(signal.SIGALRM, frame)  # may raise TaskTimeout, as SIGALRM would
        return trace

    info = MessageInfo("m1", "x", time_limit_s=1e-9)
    sys.settrace(trace)
    try:
        handled = worker._run_handler(b"x", info)
    finally:
        sys.settrace(None)
    assert fired, "the trace never reached the except clause"
    assert handled is False
    assert worker.counts.failed == 1


# -- against a real server ------------------------------------------------------------------


def test_burst_handles_everything_in_order_and_confirms_it(
    server: ServerProcess, client: Client
) -> None:
    for n in range(10):
        assert client.set("work", f"m{n}".encode(), noreply=False)
    seen: list[bytes] = []
    worker = make_worker(server.port, seen.append)
    assert worker.run() == 0
    assert seen == [f"m{n}".encode() for n in range(10)]
    assert (worker.counts.processed, worker.counts.failed, worker.counts.redelivered) == (10, 0, 0)
    # Confirmed, not merely read: nothing comes back when the worker's connection is gone.
    assert client.get("work/t=100") is None


def test_failed_message_goes_back_and_poison_ends_in_the_dead_letter_queue(
    tmp_path: Path,
) -> None:
    config = tmp_path / "kestrelq.toml"
    config.write_text('[queues.work]\nmax_deliveries = 3\ndead_letter = "work_dead"\n')
    server = ServerProcess(tmp_path / "data", "--config", str(config)).start()
    c = Client(("127.0.0.1", server.port), timeout=10, connect_timeout=5)
    try:
        for body in (b"a", b"poison", b"b", b"c"):
            assert c.set("work", body, noreply=False)
        calls: list[bytes] = []

        def handler(body: bytes) -> None:
            calls.append(body)
            if body == b"poison":
                raise ValueError("poison")

        worker = make_worker(server.port, handler)
        assert worker.run() == 0
        # The poison message is aborted back to the head each time, so it comes straight
        # back until the server moves it aside; the others flow past it.
        assert calls.count(b"poison") == 3
        assert [b for b in calls if b != b"poison"] == [b"a", b"b", b"c"]
        assert (worker.counts.processed, worker.counts.failed) == (3, 3)
        assert worker.counts.redelivered == 3
        assert c.get("work_dead") == b"poison"
        assert c.get("work/t=50") is None
    finally:
        c.close()
        assert server.stop() == 0, server.log()


def test_worker_waits_for_a_server_that_is_down_and_reconnects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kestrelq.worker.runtime")
    port = free_port()
    seen: list[bytes] = []
    worker = make_worker(port, seen.append, burst=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    server = ServerProcess(tmp_path / "data", port=port)
    try:
        wait_until(
            lambda: sum("unavailable" in r.message for r in caplog.records) >= 3,
            10,
            what="three logged reconnect attempts",
        )
        server.start()
        c = Client(("127.0.0.1", port), timeout=10, connect_timeout=5)
        assert c.set("work", b"after the outage", noreply=False)
        c.close()
        wait_until(lambda: seen, 60, what="the message handled after reconnecting")
    finally:
        worker.request_stop()
        thread.join(10)
        if server.proc is not None:
            assert server.stop() == 0, server.log()
    assert not thread.is_alive()
    assert seen == [b"after the outage"]
    assert worker.counts.reconnects == 1
    assert any("reconnected to queue" in r.message for r in caplog.records)
    assert any("stopped (warm): processed=1 failed=0" in r.message for r in caplog.records)


def test_connection_lost_mid_task_means_redelivery_not_a_confirm_on_a_new_connection(
    tmp_path: Path,
) -> None:
    """Rule 3 of kestrelq.worker.runtime: the server crashes while a handler runs.

    The open read was never confirmed, so after the restart the message is back at the head.
    The worker must notice the broken connection, count the message as redelivered, and open
    a fresh read without `/close` on the new connection: the message is handled again.
    """
    server = ServerProcess(tmp_path / "data").start()
    c = Client(("127.0.0.1", server.port), timeout=10, connect_timeout=5)
    for body in (b"m1", b"m2"):
        assert c.set("work", body, noreply=False)
    c.close()
    calls: list[bytes] = []

    def handler(body: bytes) -> None:
        calls.append(body)
        if len(calls) == 1:
            server.kill()
            server.start()

    worker = make_worker(server.port, handler)
    try:
        assert worker.run() == 0
    finally:
        assert server.stop() == 0, server.log()
    assert calls == [b"m1", b"m1", b"m2"]
    assert worker.counts.processed == 3
    assert worker.counts.redelivered == 1
    assert worker.counts.reconnects == 1


def test_max_messages_exits_after_that_many(server: ServerProcess, client: Client) -> None:
    for n in range(5):
        assert client.set("work", f"m{n}".encode(), noreply=False)
    seen: list[bytes] = []
    worker = make_worker(server.port, seen.append, burst=False, max_messages=2)
    assert worker.run() == 0
    assert seen == [b"m0", b"m1"]
    # The two it handled were confirmed; the rest wait for the next worker.
    assert client.get("work") == b"m2"
