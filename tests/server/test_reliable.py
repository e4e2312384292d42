"""Reliable reads (`/open`, `/close`, `/abort`) and blocking reads (`/t=`), edge cases.

Kestrel's rules: open reads are held per connection and queue; a disconnect or a restart puts
them back at the head (at-least-once); blocked readers are served first come, first served;
an item meant for a reader that vanished goes to the next one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, drain_replies, put, server_stats, value, wait_until


def stat(srv: ServerProcess, queue: str, name: str) -> str:
    return server_stats(srv.port).get(f"queue_{queue}_{name}", "")


def waiters_are(srv: ServerProcess, queue: str, count: int) -> None:
    wait_until(lambda: stat(srv, queue, "waiters") == str(count), 60, what=f"{count} waiters")


@pytest.fixture
def multi(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server allowing 3 open reads per connection and queue."""
    proc = ServerProcess(tmp_path / "data", "--max-open-reads", "3").start()
    yield proc
    assert proc.stop() == 0, proc.log()


# -- open, close, abort -------------------------------------------------------------------------


def test_double_open_is_error_close_and_item_back_at_head(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"a")
        put(w, "q", b"b")
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/open\r\n").startswith(b"ERROR")
        assert w.at_eof()
    with Wire(server.port) as w:
        wait_until(lambda: w.call(b"get q/peek\r\n") == value("q/peek", b"a"), 60)
        assert w.call(b"get q\r\n") == value("q", b"a")
        assert w.call(b"get q\r\n") == value("q", b"b")


def test_open_reads_up_to_the_limit_then_all_back_in_order(multi: ServerProcess) -> None:
    with Wire(multi.port) as w:
        for data in (b"a", b"b", b"c", b"d"):
            put(w, "q", data)
        opened = [w.call(b"get q/open\r\n") for _ in range(3)]
        assert opened == [value("q/open", d) for d in (b"a", b"b", b"c")]
        assert stat(multi, "q", "open_transactions") == "3"
        assert w.call(b"get q/open\r\n").startswith(b"ERROR")
        assert w.at_eof()
    wait_until(lambda: stat(multi, "q", "open_transactions") == "0", 60)
    with Wire(multi.port) as w:
        assert [w.call(b"get q\r\n") for _ in range(4)] == [
            value("q", d) for d in (b"a", b"b", b"c", b"d")
        ]


def test_close_and_abort_act_on_the_oldest_open_read(multi: ServerProcess) -> None:
    with Wire(multi.port) as w:
        for data in (b"a", b"b", b"c"):
            put(w, "q", data)
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/open\r\n") == value("q/open", b"b")
        assert w.call(b"get q/open\r\n") == value("q/open", b"c")
        assert w.call(b"get q/close\r\n") == b"END\r\n"  # confirms a
        assert w.call(b"get q/abort\r\n") == b"END\r\n"  # b back at the head
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"b")
    # c was still open: the disconnect puts it back in front of b.
    wait_until(lambda: stat(multi, "q", "open_transactions") == "0", 60)
    with Wire(multi.port) as w:
        assert w.call(b"get q\r\n") == value("q", b"c")
        assert w.call(b"get q\r\n") == value("q", b"b")
        assert w.call(b"get q\r\n") == b"END\r\n"


def test_open_reads_on_different_queues_are_independent(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "x", b"1")
        put(w, "y", b"2")
        put(w, "y", b"3")
        assert w.call(b"get x/open\r\n") == value("x/open", b"1")
        assert w.call(b"get y/open\r\n") == value("y/open", b"2")
        assert w.call(b"get y/close\r\n") == b"END\r\n"
        assert w.call(b"get y\r\n") == value("y", b"3")  # nothing open on y any more
        assert w.call(b"get x/close\r\n") == b"END\r\n"
    assert stat(server, "x", "items") == "0" and stat(server, "y", "items") == "0"


def test_close_and_abort_with_nothing_open_are_harmless(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"stay")
        for key in ("q/close", "q/abort", "q/t=10/close", "q/abort/t=10", "empty/close"):
            assert w.call(f"get {key}\r\n".encode()) == b"END\r\n", key
        # Nothing was taken: close alone never fetches.
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"stay")
        assert stat(server, "q", "canceled_transactions") == "0"


def test_close_on_another_connection_does_not_confirm(server: ServerProcess) -> None:
    with Wire(server.port) as holder, Wire(server.port) as other:
        put(holder, "q", b"mine")
        assert holder.call(b"get q/open\r\n") == value("q/open", b"mine")
        assert other.call(b"get q/close\r\n") == b"END\r\n"
        assert other.call(b"get q/abort\r\n") == b"END\r\n"
        assert stat(server, "q", "open_transactions") == "1"
    wait_until(lambda: stat(server, "q", "items") == "1", 60, what="the read back")


def test_abort_hands_the_item_to_the_next_reader(server: ServerProcess) -> None:
    with Wire(server.port) as a, Wire(server.port) as b:
        put(a, "q", b"x")
        put(a, "q", b"y")
        assert a.call(b"get q/open\r\n") == value("q/open", b"x")
        assert a.call(b"get q/abort\r\n") == b"END\r\n"
        assert b.call(b"get q/open\r\n") == value("q/open", b"x")
        assert a.call(b"get q/open\r\n") == value("q/open", b"y")


def test_peek_while_open_shows_the_next_item(server: ServerProcess) -> None:
    with Wire(server.port) as w, Wire(server.port) as other:
        put(w, "q", b"a")
        put(w, "q", b"b")
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"b")
        assert other.call(b"get q/peek\r\n") == value("q/peek", b"b")
        assert (stat(server, "q", "items"), stat(server, "q", "open_transactions")) == ("1", "1")
        assert w.call(b"get q/close\r\n") == b"END\r\n"
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"b")


# -- disconnect and restart ------------------------------------------------------------------


def test_disconnect_returns_open_read_to_head_for_next_reader(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"first")
        put(w, "q", b"second")
    worker = Wire(server.port)
    assert worker.call(b"get q/open\r\n") == value("q/open", b"first")
    with Wire(server.port) as nxt:
        assert nxt.call(b"get q/open\r\n") == value("q/open", b"second")
        assert nxt.call(b"get q/abort\r\n") == b"END\r\n"
        worker.close()
        wait_until(lambda: stat(server, "q", "items") == "2", 60, what="the read back")
        assert nxt.call(b"get q/open\r\n") == value("q/open", b"first")


def test_disconnect_hands_open_read_to_a_blocked_reader(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"job")
    worker = Wire(server.port)
    assert worker.call(b"get q/open\r\n") == value("q/open", b"job")
    with Wire(server.port) as waiting:
        waiting.send(b"get q/t=10000/open\r\n")
        waiters_are(server, "q", 1)
        worker.close()
        assert waiting.reply() == value("q/t=10000/open", b"job")


@pytest.mark.parametrize("how", ["kill-9", "sigterm"])
def test_restart_with_an_open_read_delivers_it_again(server: ServerProcess, how: str) -> None:
    with Wire(server.port) as w:
        for data in (b"done", b"open", b"ready"):
            put(w, "q", data)
        holder = Wire(server.port)
        assert holder.call(b"get q/open\r\n") == value("q/open", b"done")
        assert holder.call(b"get q/close/open\r\n") == value("q/close/open", b"open")
        if how == "kill-9":
            server.kill()
        else:
            assert server.stop() == 0
        holder.close()
    server.start()
    with Wire(server.port) as w:
        # At-least-once: the read that was open comes again, ahead of the rest; the
        # confirmed one never does.
        assert w.call(b"get q\r\n") == value("q", b"open")
        assert w.call(b"get q\r\n") == value("q", b"ready")
        assert w.call(b"get q\r\n") == b"END\r\n"


# -- blocking reads ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_ms", [100, 500, 1500])
def test_blocking_timeout_returns_end_after_about_t(server: ServerProcess, timeout_ms: int) -> None:
    with Wire(server.port) as w:
        for key in (f"q/t={timeout_ms}", f"q/t={timeout_ms}/open", f"q/peek/t={timeout_ms}"):
            started = time.monotonic()
            assert w.call(f"get {key}\r\n".encode()) == b"END\r\n"
            elapsed = time.monotonic() - started
            # uvloop's timers work on libuv's cached millisecond clock, so a wait can end
            # a fraction of a millisecond before t; allow 2 ms of that, no more.
            assert timeout_ms / 1000 - 0.002 <= elapsed < timeout_ms / 1000 + 2, key


def test_close_then_block_confirms_before_waiting(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"a")
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/close/open/t=200\r\n") == b"END\r\n"
        assert stat(server, "q", "open_transactions") == "0"
    with Wire(server.port) as w:
        assert w.call(b"get q\r\n") == b"END\r\n"


def test_blocked_readers_are_served_fifo(server: ServerProcess) -> None:
    readers = [Wire(server.port) for _ in range(4)]
    try:
        for i, reader in enumerate(readers):
            # Join the line one at a time, so the arrival order is known.
            reader.send(b"get q/t=10000\r\n")
            waiters_are(server, "q", i + 1)
        with Wire(server.port) as w:
            for i in range(4):
                put(w, "q", b"item%d" % i)
        assert [r.reply() for r in readers] == [value("q/t=10000", b"item%d" % i) for i in range(4)]
    finally:
        for reader in readers:
            reader.close()


def test_one_item_wakes_one_reader(server: ServerProcess) -> None:
    first, second = Wire(server.port), Wire(server.port)
    try:
        first.send(b"get q/t=10000/open\r\n")
        waiters_are(server, "q", 1)
        second.send(b"get q/t=800\r\n")
        waiters_are(server, "q", 2)
        with Wire(server.port) as w:
            put(w, "q", b"only")
        assert first.reply() == value("q/t=10000/open", b"only")
        assert second.reply() == b"END\r\n"  # timed out: the item was not given twice
    finally:
        first.close()
        second.close()


def test_reader_that_vanished_is_skipped(server: ServerProcess) -> None:
    gone, next_in_line = Wire(server.port), Wire(server.port)
    try:
        gone.send(b"get q/t=10000\r\n")
        waiters_are(server, "q", 1)
        next_in_line.send(b"get q/t=10000\r\n")
        waiters_are(server, "q", 2)
        gone.close()
        waiters_are(server, "q", 1)
        with Wire(server.port) as w:
            put(w, "q", b"x")
        assert next_in_line.reply() == value("q/t=10000", b"x")
    finally:
        next_in_line.close()


def test_open_read_handed_to_a_vanishing_reader_reaches_the_next(server: ServerProcess) -> None:
    # No waiting for the server to notice the disconnect: whichever way the race goes, the
    # item is handed to the next reader (directly, or back from the dead connection).
    for round_no in range(5):
        gone, next_in_line = Wire(server.port), Wire(server.port)
        try:
            gone.send(b"get r/t=10000/open\r\n")
            waiters_are(server, "r", 1)
            next_in_line.send(b"get r/t=10000/open\r\n")
            waiters_are(server, "r", 2)
            gone.close()
            with Wire(server.port) as w:
                put(w, "r", b"round%d" % round_no)
            assert next_in_line.reply() == value("r/t=10000/open", b"round%d" % round_no)
            assert next_in_line.call(b"get r/close\r\n") == b"END\r\n"
        finally:
            next_in_line.close()
        wait_until(lambda: stat(server, "r", "waiters") == "0", 60)
    assert stat(server, "r", "items") == "0"


def test_pipelined_commands_wait_behind_a_parked_get(server: ServerProcess) -> None:
    with Wire(server.port) as parked, Wire(server.port) as w:
        parked.send(b"get q/t=10000\r\nset r 0 0 4\r\nlate\r\nversion\r\nget r\r\n")
        waiters_are(server, "q", 1)
        # The set behind the parked get has not run yet.
        assert stat(server, "r", "items") in ("", "0")
        put(w, "q", b"wake")
        assert parked.reply() == value("q/t=10000", b"wake")
        assert parked.reply() == b"STORED\r\n"
        assert parked.reply().startswith(b"VERSION ")
        assert parked.reply() == value("r", b"late")


def test_pipelined_commands_run_after_a_timed_out_get(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        w.send(b"get q/t=300\r\nset q 0 0 1\r\nz\r\nget q\r\n")
        assert w.reply() == b"END\r\n"
        assert w.reply() == b"STORED\r\n"
        assert w.reply() == value("q", b"z")


def test_disconnect_while_blocked_leaves_no_waiter(server: ServerProcess) -> None:
    w = Wire(server.port)
    w.send(b"get q/t=60000/open\r\n")
    waiters_are(server, "q", 1)
    w.close()
    waiters_are(server, "q", 0)
    with Wire(server.port) as other:
        put(other, "q", b"kept")
        assert other.call(b"get q\r\n") == value("q", b"kept")


# -- delete and shutdown with reads in flight ------------------------------------------------


def test_delete_while_open_forgets_the_read(server: ServerProcess) -> None:
    holder = Wire(server.port)
    put(holder, "d", b"x")
    assert holder.call(b"get d/open\r\n") == value("d/open", b"x")
    with Wire(server.port) as w:
        assert w.call(b"delete d\r\n") == b"DELETED\r\n"
    holder.close()
    wait_until(lambda: server_stats(server.port)["curr_connections"] == "1", 60)
    with Wire(server.port) as w:
        assert w.call(b"get d\r\n") == b"END\r\n"


def test_a_close_for_a_deleted_queue_does_not_confirm_a_read_on_its_successor(
    server: ServerProcess,
) -> None:
    # A's read went with the deleted queue; B opens the first read of the queue made again
    # under the same name. A's late close must not confirm B's read, or B's abort loses it.
    with Wire(server.port) as a, Wire(server.port) as b, Wire(server.port) as admin:
        put(admin, "q", b"old")
        assert a.call(b"get q/open\r\n") == value("q/open", b"old")
        assert admin.call(b"delete q\r\n") == b"DELETED\r\n"
        put(admin, "q", b"new")
        assert b.call(b"get q/open\r\n") == value("q/open", b"new")
        assert a.call(b"get q/close\r\n") == b"END\r\n"
        assert stat(server, "q", "open_transactions") == "1"
        assert b.call(b"get q/abort\r\n") == b"END\r\n"
        assert admin.call(b"get q/peek\r\n") == value("q/peek", b"new")
        assert stat(server, "q", "items") == "1"


@pytest.mark.parametrize("how", ["shutdown-command", "sigterm"])
def test_shutdown_answers_parked_reads_and_returns_open_ones(
    shutdown_server: ServerProcess, how: str
) -> None:
    server = shutdown_server
    holder, parked = Wire(server.port), Wire(server.port)
    try:
        put(holder, "q", b"held")
        assert holder.call(b"get q/open\r\n") == value("q/open", b"held")
        parked.send(b"get q/t=60000\r\n")
        waiters_are(server, "q", 1)
        if how == "sigterm":
            assert server.proc is not None
            server.proc.terminate()
        else:
            with Wire(server.port) as w:
                w.send(b"shutdown\r\n")
        assert parked.reply() == b"END\r\n"  # answered at once, not after 60 s
        assert parked.at_eof()
        assert holder.at_eof()
        assert server.proc is not None and server.proc.wait(15) == 0
    finally:
        holder.close()
        parked.close()
    server.start()
    with Wire(server.port) as w:
        assert w.call(b"get q\r\n") == value("q", b"held")


def test_many_blocked_readers_are_served_fifo(server: ServerProcess) -> None:
    count = 200
    readers: list[Wire] = []
    try:
        for i in range(count):
            reader = Wire(server.port)
            readers.append(reader)
            reader.send(b"get q/t=30000/open\r\n")
            waiters_are(server, "q", i + 1)
        with Wire(server.port) as w:
            # One write with every set: the wake-ups happen in a burst.
            w.send(b"".join(b"set q 0 0 %d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(count)))
            assert [w.reply() for _ in range(count)] == [b"STORED\r\n"] * count
        for i, reader in enumerate(readers):
            assert reader.reply() == value("q/t=30000/open", b"%d" % i)
    finally:
        for reader in readers:
            reader.close()
    # Every reader vanished holding its read: all of them are back in the queue.
    wait_until(lambda: stat(server, "q", "items") == str(count), 60, what="reads returned")
    assert stat(server, "q", "open_transactions") == "0"


def test_a_poison_message_moved_to_its_dead_letter_queue_is_logged_once(tmp_path: Path) -> None:
    # Workers in a pool each see only their own share of a message's deliveries, so none of
    # them can tell that it was the last: the server, which moves it, says so, in one line
    # that shows what the message was without letting its bytes forge log lines.
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[queues.poison]\nmax_deliveries = 1\n")
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    try:
        with Wire(srv.port) as w:
            put(w, "poison", b'{"id": "m-1\\nFORGED", "task": "x"}\nFORGED line')
            assert w.call(b"get poison/open\r\n").startswith(b"VALUE poison/open")
            assert w.call(b"get poison/abort\r\n") == b"END\r\n"
            assert w.call(b"get poison/open\r\n") == b"END\r\n"
        assert len(drain_replies(srv.port, "poison_dead")) == 1
    finally:
        assert srv.stop() == 0
    lines = [line for line in srv.log().splitlines() if "poison message" in line]
    assert len(lines) == 1, lines
    assert "'poison' moved to 'poison_dead' after 1 deliveries" in lines[0]
    assert '"id": "m-1' in lines[0]
    assert not any(line.startswith("FORGED") for line in srv.log().splitlines())
