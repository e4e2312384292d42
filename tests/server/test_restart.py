"""What each command did must still be true after a restart, clean (SIGTERM) or kill -9.

The journal is the truth; these tests check that every kind of state change reaches it: gets,
confirms, aborts, flushes, deletes, fanout registrations, flags and expiry, delivery counts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    ServerProcess,
    Wire,
    drain_replies,
    put,
    server_stats,
    serving,
    value,
    wait_until,
)

from kestrelq.server import counters
from kestrelq.server.config import load
from kestrelq.server.server import Server


def restart(srv: ServerProcess, how: str) -> None:
    assert srv.proc is not None
    if how == "kill-9":
        srv.kill()
    elif how == "sigint":
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(15) == 0, srv.log()
    else:
        assert srv.stop() == 0, srv.log()
    srv.start()


HOW = pytest.mark.parametrize("how", ["kill-9", "sigterm"])


@pytest.mark.parametrize("how", ["sigterm", "sigint"])
def test_signal_stops_cleanly_and_keeps_everything(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        for data in (b"a", b"b", b"c"):
            put(w, "q", data)
        assert w.call(b"get q\r\n") == value("q", b"a")
        restart(server, how)
    assert "Traceback" not in server.log()
    assert drain_replies(server.port, "q") == [value("q", b"b"), value("q", b"c")]


@HOW
def test_plain_get_and_confirmed_reads_stay_gone(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        for data in (b"a", b"b", b"c", b"d"):
            put(w, "q", data)
        assert w.call(b"get q\r\n") == value("q", b"a")
        assert w.call(b"get q/open\r\n") == value("q/open", b"b")
        assert w.call(b"get q/close\r\n") == b"END\r\n"
        restart(server, how)
    assert drain_replies(server.port, "q") == [value("q", b"c"), value("q", b"d")]


@HOW
def test_confirm_command_is_journalled(tmp_path: Path, how: str) -> None:
    srv = ServerProcess(tmp_path / "data", "--max-open-reads", "5").start()
    try:
        with Wire(srv.port) as w:
            for data in (b"a", b"b", b"c"):
                put(w, "q", data)
            assert w.call(b"get q/open\r\n") == value("q/open", b"a")
            assert w.call(b"get q/open\r\n") == value("q/open", b"b")
            assert w.call(b"confirm q 2\r\n") == b"END\r\n"
            restart(srv, how)
        assert drain_replies(srv.port, "q") == [value("q", b"c")]
    finally:
        assert srv.stop() == 0


@HOW
def test_aborted_read_is_back_at_the_head_after_restart(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        for data in (b"a", b"b"):
            put(w, "q", data)
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/abort\r\n") == b"END\r\n"
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"a")
        restart(server, how)
    assert drain_replies(server.port, "q") == [value("q", b"a"), value("q", b"b")]


@HOW
def test_flush_and_flush_all_stay_flushed(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        for queue in ("one", "two", "three"):
            put(w, queue, b"old")
        assert w.call(b"flush one\r\n") == b"END\r\n"
        put(w, "one", b"new")
        assert w.call(b"flush_all\r\n") == b"Flushed all queues.\r\n"
        put(w, "two", b"newer")
        restart(server, how)
    assert drain_replies(server.port, "one") == []
    assert drain_replies(server.port, "two") == [value("two", b"newer")]
    assert drain_replies(server.port, "three") == []


@HOW
def test_deleted_queue_stays_deleted(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        put(w, "gone", b"x")
        put(w, "kept", b"y")
        assert w.call(b"delete gone\r\n") == b"DELETED\r\n"
        restart(server, how)
    stats = server_stats(server.port)
    assert "queue_gone_items" not in stats
    assert stats["queue_kept_items"] == "1"
    assert not list(server.data_dir.glob("gone.*"))


@HOW
def test_flags_expiry_and_order_survive(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"first", flags=7, exptime=3600)
        put(w, "q", b"soon", flags=1, exptime=1)
        put(w, "q", b"last", flags=2**32 - 1)
        set_at = time.time()
        restart(server, how)
    with Wire(server.port) as w:
        assert w.call(b"get q\r\n") == value("q", b"first", 7)
    # Expiry is an absolute time in the journal: downtime counts.
    wait_until(lambda: time.time() > set_at + 1.1, 60, what="the short expiry to pass")
    restart(server, how)
    assert drain_replies(server.port, "q") == [value("q", b"last", 2**32 - 1)]


@HOW
def test_fanout_children_and_open_reads_of_children(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        assert w.call(b"get feed+a\r\n") == b"END\r\n"
        assert w.call(b"get feed+b\r\n") == b"END\r\n"
        put(w, "feed", b"x")
        assert w.call(b"get feed+a/open\r\n") == value("feed+a/open", b"x")
        restart(server, how)
    with Wire(server.port) as w:
        put(w, "feed", b"y")
    assert drain_replies(server.port, "feed") == [value("feed", b"x"), value("feed", b"y")]
    assert drain_replies(server.port, "feed+a") == [value("feed+a", b"x"), value("feed+a", b"y")]
    assert drain_replies(server.port, "feed+b") == [value("feed+b", b"x"), value("feed+b", b"y")]


@HOW
def test_delivery_count_survives_restart(tmp_path: Path, how: str) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[queues.poison]\nmax_deliveries = 2\n")
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    try:

        def deliver_and_vanish() -> None:
            with Wire(srv.port) as w:
                assert w.call(b"get poison/open\r\n") == value("poison/open", b"bad")
            wait_until(lambda: server_stats(srv.port)["queue_poison_items"] == "1", 60)

        with Wire(srv.port) as w:
            put(w, "poison", b"bad")
        deliver_and_vanish()
        restart(srv, how)
        deliver_and_vanish()
        restart(srv, how)
        with Wire(srv.port) as w:
            assert w.call(b"get poison/open\r\n") == b"END\r\n"
        assert drain_replies(srv.port, "poison_dead") == [value("poison_dead", b"bad")]
    finally:
        assert srv.stop() == 0


@HOW
def test_open_read_at_crash_counts_as_a_delivery(tmp_path: Path, how: str) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[queues.poison]\nmax_deliveries = 1\n")
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    try:
        holder = Wire(srv.port)
        put(holder, "poison", b"crashes-the-worker")
        assert holder.call(b"get poison/open\r\n") == value("poison/open", b"crashes-the-worker")
        restart(srv, how)
        holder.close()
        with Wire(srv.port) as w:
            assert w.call(b"get poison/open\r\n") == b"END\r\n"
        assert drain_replies(srv.port, "poison_dead") == [
            value("poison_dead", b"crashes-the-worker")
        ]
    finally:
        assert srv.stop() == 0


@HOW
def test_many_restarts_keep_a_consistent_queue(server: ServerProcess, how: str) -> None:
    # Interleave work and restarts; the model (a list) must match the server every time.
    model: list[bytes] = []

    def add(w: Wire, i: int) -> None:
        put(w, "m", b"%d" % i)
        model.append(b"%d" % i)

    def take(w: Wire, i: int) -> None:
        expected = value("m", model.pop(0)) if model else b"END\r\n"
        assert w.call(b"get m\r\n") == expected

    def take_reliably(w: Wire, i: int) -> None:
        if model:
            assert w.call(b"get m/open\r\n") == value("m/open", model.pop(0))
            assert w.call(b"get m/close\r\n") == b"END\r\n"

    steps: list[Callable[[Wire, int], None]] = [add, add, take, add, take_reliably, add, add]
    for round_no in range(4):
        with Wire(server.port) as w:
            for i, step in enumerate(steps):
                step(w, round_no * 10 + i)
        restart(server, how)
        with Wire(server.port) as w:
            expected = [value("m/peek", model[0])] if model else [b"END\r\n"]
            assert [w.call(b"get m/peek\r\n")] == expected
    assert drain_replies(server.port, "m") == [value("m", d) for d in model]


@HOW
def test_queue_counters_survive_a_restart(tmp_path: Path, how: str) -> None:
    with serving(tmp_path / "data", config="[queues.work]\nmax_deliveries = 1\n") as srv:
        with Wire(srv.port) as w:
            for data in (b"a", b"b", b"c"):
                put(w, "work", data)
            # Each open after an abort finds the aborted item over its limit: a and b are
            # dead-lettered, c is handed out and confirmed.
            for data in (b"a", b"b"):
                assert w.call(b"get work/open\r\n") == value("work/open", data)
                assert w.call(b"get work/abort\r\n") == b"END\r\n"
            assert w.call(b"get work/open\r\n") == value("work/open", b"c")
            assert w.call(b"get work/close\r\n") == b"END\r\n"
        wanted = {"dead_lettered": "2", "total_items": "3", "got_items": "3", "items": "0"}

        def work() -> dict[str, str]:
            stats = server_stats(srv.port)
            return {key: stats[f"queue_work_{key}"] for key in wanted}

        assert work() == wanted
        if how == "kill-9":
            # What a crash keeps is what was saved: wait for the save, which comes within
            # a second of the last change.
            saved = srv.data_dir / "counters.json"
            wait_until(
                lambda: (
                    saved.exists()
                    and json.loads(saved.read_text())["queues"]["work"]["dead_lettered"] == 2
                ),
                60,
            )
        restart(srv, how)
        assert work() == wanted
        assert server_stats(srv.port)["queue_work_dead_dead_lettered"] == "0"


def test_queue_counters_are_encoded_and_written_outside_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Encoding every queue's counters takes a while with many queues (257 ms for 50,000):
    # done in the loop thread, it held up every client once a second.
    saved_in: list[int] = []
    real_save = counters.save

    def save(data_dir: Path, counts: counters.Snapshot) -> None:
        saved_in.append(threading.get_ident())
        real_save(data_dir, counts)

    monkeypatch.setattr(counters, "save", save)
    saved = tmp_path / "data" / counters.FILENAME

    def counted() -> bool:
        return saved.exists() and json.loads(saved.read_text())["queues"]["q"]["total_items"] == 1

    async def scenario() -> list[int]:
        config = load({"data_dir": str(tmp_path / "data"), "port": 0, "fsync": "never"}, {})
        server = Server(config)
        serving = asyncio.create_task(server.serve(handle_signals=False))
        await wait_for_loop(lambda: server._server is not None, "the server's start")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"set q 0 0 1\r\nx\r\n")
        assert await reader.readline() == b"STORED\r\n"
        await wait_for_loop(counted, "the housekeeping's save")
        during = list(saved_in)  # the save at shutdown may run in the loop: it is the last
        writer.close()
        server.request_shutdown("test over")
        assert await serving == 0
        return during

    async def wait_for_loop(predicate: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    during = asyncio.run(scenario())
    assert during
    assert threading.get_ident() not in during


def test_a_damaged_counters_file_is_ignored_and_loses_no_item(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as srv:
        with Wire(srv.port) as w:
            put(w, "work", b"kept")
        assert srv.stop() == 0
        (srv.data_dir / "counters.json").write_text("{not json")
        srv.start()
        assert "counters.json: ignored" in srv.log()
        assert drain_replies(srv.port, "work") == [value("work", b"kept")]


def test_a_read_returned_by_a_disconnect_is_saved_too(server: ServerProcess) -> None:
    saved = server.data_dir / "counters.json"

    def counted(key: str, want: int) -> bool:
        return saved.exists() and json.loads(saved.read_text())["queues"]["q"][key] == want

    with Wire(server.port) as w:
        put(w, "q", b"held")
        assert w.call(b"get q/open\r\n") == value("q/open", b"held")
        wait_until(lambda: counted("transactions", 1), 60, what="the open read saved")
    # No command comes after the disconnect: the save must notice it all the same.
    wait_until(lambda: counted("canceled_transactions", 1), 60, what="the return saved")
    restart(server, "kill-9")
    assert server_stats(server.port)["queue_q_canceled_transactions"] == "1"
