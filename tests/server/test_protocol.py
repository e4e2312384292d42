"""QueueProtocol without sockets: a MockTransport records what a connection writes.

The server is real (its journals in a temporary directory, its ledger, its queues); only the
transport is a fake, as uvicorn tests its protocol classes. Each test runs its own event loop,
and waits for a condition on what was written, never for a length of time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from kestrelq import WIRE_VERSION
from kestrelq.server.config import load
from kestrelq.server.connection import QueueProtocol
from kestrelq.server.server import Server

VERSION = f"VERSION {WIRE_VERSION}\r\n".encode()


class MockTransport:
    """The part of asyncio.Transport a connection uses, recording instead of sending."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False
        self.reading = True
        self.eof_written = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def writelines(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def run(tmp_path: Path, scenario: Callable[[Server], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        config = load({"data_dir": str(tmp_path / "data"), "port": 0, **settings}, {})
        server = Server(config)
        server.recover()
        try:
            await scenario(server)
        finally:
            server.store.close()

    asyncio.run(main())


def connect(server: Server) -> tuple[QueueProtocol, MockTransport]:
    conn = QueueProtocol(server.state)
    transport = MockTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    """Let the event loop run until `predicate()` holds (a generous deadline, not a delay)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def test_a_reply_waits_for_the_group_fsync_and_later_replies_wait_behind_it(
    tmp_path: Path,
) -> None:
    async def scenario(server: Server) -> None:
        conn, t = connect(server)
        conn.data_received(b"set q 0 0 1\r\nx\r\nversion\r\n")
        # Both replies are held: STORED until its record is fsynced, VERSION behind it.
        assert t.buffer == b""
        assert server.store.ledger.waiting
        fsyncs = server.store.fsyncs
        await until(lambda: t.buffer, "the replies after the fsync")
        assert t.take() == b"STORED\r\n" + VERSION
        assert server.store.fsyncs == fsyncs + 1
        assert not server.store.ledger.waiting

    run(tmp_path, scenario, fsync="always")


def test_without_fsync_replies_go_out_at_once(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        conn, t = connect(server)
        conn.data_received(b"set q 0 0 1\r\nx\r\nget q\r\n")
        assert t.take() == b"STORED\r\nVALUE q 0 1\r\nx\r\nEND\r\n"

    run(tmp_path, scenario, fsync="never")


def test_a_client_that_does_not_read_stops_being_read(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        conn, t = connect(server)
        conn.pause_writing()  # the transport's buffer is over its high-water mark
        conn.data_received(b"version\r\n" * 3)
        assert t.buffer == b"" and not t.reading
        conn.resume_writing()
        assert t.take() == VERSION * 3 and t.reading

    run(tmp_path, scenario, fsync="never")


def test_a_blocked_get_is_woken_by_a_set_or_times_out(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        reader, rt = connect(server)
        writer, wt = connect(server)
        reader.data_received(b"get q/t=60000\r\nversion\r\n")
        assert rt.buffer == b"" and server.state.waiters.count("q") == 1
        writer.data_received(b"set q 0 0 3\r\nabc\r\n")
        assert wt.take() == b"STORED\r\n"
        await until(lambda: rt.buffer, "the woken reader's reply")
        assert rt.take() == b"VALUE q/t=60000 0 3\r\nabc\r\nEND\r\n" + VERSION
        reader.data_received(b"get q/t=20\r\n")
        await until(lambda: rt.buffer, "the timeout")
        assert rt.take() == b"END\r\n" and server.state.waiters.count("q") == 0

    run(tmp_path, scenario, fsync="never")


def test_connection_lost_returns_open_reads_and_leaves_the_line(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        holder, ht = connect(server)
        holder.data_received(b"set q 0 0 1\r\na\r\nget q/open\r\nget w/t=60000\r\n")
        assert ht.take() == b"STORED\r\nVALUE q/open 0 1\r\na\r\nEND\r\n"
        assert server.state.waiters.count("w") == 1
        holder.connection_lost(None)
        assert server.state.waiters.count("w") == 0
        assert holder not in server.state.connections
        other, ot = connect(server)
        other.data_received(b"get q\r\nset w 0 0 1\r\nb\r\n")
        assert ot.take() == b"VALUE q 0 1\r\na\r\nEND\r\nSTORED\r\n"
        await until(lambda: not server.state.waiters.count("w"), "no waiter left")
        other.data_received(b"get w\r\n")
        assert ot.take() == b"VALUE w 0 1\r\nb\r\nEND\r\n"  # the lost reader took nothing

    run(tmp_path, scenario, fsync="never")


def test_a_long_stats_reply_lets_other_connections_in_between_its_parts(
    tmp_path: Path,
) -> None:
    async def scenario(server: Server) -> None:
        for i in range(1000):
            server.collection.queue(f"q{i:04d}")
        greedy, gt = connect(server)
        other, ot = connect(server)
        greedy.data_received(b"stats\r\nversion\r\n")
        assert gt.buffer.startswith(b"STAT uptime ") and not gt.buffer.endswith(b"END\r\n")
        other.data_received(b"version\r\n")  # served before the stats reply is complete
        assert ot.take() == VERSION
        assert not gt.buffer.endswith(b"END\r\n")
        await until(lambda: gt.buffer.endswith(VERSION), "the rest of the stats reply")
        reply = gt.take()
        assert reply.count(b"END\r\n") == 1 and b"STAT queue_q0999_items 0\r\n" in reply
        assert reply.index(b"queue_q0000_") < reply.index(b"queue_q0999_")

    run(tmp_path, scenario, fsync="never")


def test_a_big_set_past_the_pending_budget_waits_unread(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        first, ft = connect(server)
        second, st = connect(server)
        first.data_received(b"set a 0 0 800\r\n" + b"a" * 100)
        second.data_received(b"set b 0 0 800\r\n" + b"b" * 100)
        assert ft.reading and not st.reading  # 800 + 800 > 1000: the second waits
        assert server.state.pending.taken == 800 and server.state.pending.waiting == 1
        first.data_received(b"a" * 700 + b"\r\n")
        assert ft.take() == b"STORED\r\n"
        await until(lambda: st.reading, "the second set admitted")
        second.data_received(b"b" * 700 + b"\r\n")
        assert st.take() == b"STORED\r\n"
        assert server.state.pending.taken == 0

    run(tmp_path, scenario, fsync="never", max_item_bytes=4096, max_pending_bytes=1000)


def test_waiting_for_the_budget_counts_against_the_read_timeout(tmp_path: Path) -> None:
    # A connection in the budget's line has not sent its command whole either: were its wait
    # not counted, anyone could park there for ever, holding a connection slot.
    async def scenario(server: Server) -> None:
        now = asyncio.get_running_loop().time()
        first, _ = connect(server)
        second, _ = connect(server)
        first.data_received(b"set a 0 0 800\r\n" + b"a" * 100)
        second.data_received(b"set b 0 0 800\r\n" + b"b" * 100)
        assert server.state.pending.waiting == 1  # the second waits for the budget
        later = now + 61  # past read_timeout_s (60)
        assert second.check_timeouts(later) is not None
        assert second.check_timeouts(now + 1) is None

    run(tmp_path, scenario, fsync="never", max_item_bytes=4096, max_pending_bytes=1000)


def test_timeouts_spare_blocked_reads_and_close_slow_commands(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        now = asyncio.get_running_loop().time()
        slow, _ = connect(server)
        blocked, _ = connect(server)
        idle, _ = connect(server)
        slow.data_received(b"get q")  # no end of line
        blocked.data_received(b"get q/t=600000\r\n")
        idle.data_received(b"version\r\n")
        later = now + 61  # past read_timeout_s (60) and idle_timeout_s (30)
        assert slow.check_timeouts(later) == "command incomplete after 60 s (5 bytes)"
        assert blocked.check_timeouts(later) is None
        assert idle.check_timeouts(later) == "idle for 30 s"
        assert idle.check_timeouts(now + 1) is None

    run(tmp_path, scenario, fsync="never", idle_timeout_s=30.0)
