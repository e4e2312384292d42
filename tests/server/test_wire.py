"""Every command and reply of docs/protocol.md, byte for byte, through a raw socket.

Each test talks to a real `python -m kestrelq serve` process. Where a queue setting is needed,
the server is started with a TOML config file, as an operator would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, put, server_stats, set_reply, value, wait_until

from kestrelq import WIRE_VERSION, __version__
from kestrelq.journal.store import segment_name


def start_with_config(tmp_path: Path, toml: str, *args: str) -> ServerProcess:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(toml)
    return ServerProcess(tmp_path / "data", "--config", str(conf), *args).start()


# -- set / get ------------------------------------------------------------------------------


def test_set_then_get_exact_bytes(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"set q 0 0 5\r\nhello\r\n") == b"STORED\r\n"
        assert w.call(b"get q\r\n") == b"VALUE q 0 5\r\nhello\r\nEND\r\n"
        assert w.call(b"get q\r\n") == b"END\r\n"


@pytest.mark.parametrize(
    "flags", [0, 1, 42, 2**31, 2**32 - 1], ids=["zero", "one", "42", "2^31", "max-u32"]
)
def test_set_keeps_flags(server: ServerProcess, flags: int) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"abc", flags=flags)
        assert w.call(b"get q\r\n") == value("q", b"abc", flags)


@pytest.mark.parametrize(
    "data",
    [b"", b"x", b"line\r\nEND\r\n", b"\x00\xff\r\n\n\r", bytes(range(256)) * 40],
    ids=["empty", "one-byte", "crlf-and-END-inside", "binary", "10KiB"],
)
def test_data_block_round_trips(server: ServerProcess, data: bytes) -> None:
    with Wire(server.port) as w:
        put(w, "q", data)
        assert w.call(b"get q\r\n") == value("q", data)


def test_items_come_out_fifo(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        for i in range(20):
            put(w, "fifo", b"%d" % i)
        assert [w.call(b"get fifo\r\n") for _ in range(20)] == [
            value("fifo", b"%d" % i) for i in range(20)
        ]


def test_command_word_case_insensitive_queue_name_case_sensitive(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"SET Jobs 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert w.call(b"GET jobs\r\n") == b"END\r\n"
        assert w.call(b"Gets Jobs\r\n") == value("Jobs", b"x")
        assert w.call(b"VERSION\r\n") == f"VERSION {WIRE_VERSION}\r\n".encode()


def test_bare_lf_line_endings(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"set q 0 0 2\nhi\r\n") == b"STORED\r\n"
        assert w.call(b"get q\n") == value("q", b"hi")
        assert w.call(b"version\n") == f"VERSION {WIRE_VERSION}\r\n".encode()


def test_noreply_set_sends_nothing_and_stays_in_step(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        # If the server answered the noreply sets, `version` would read a STORED first.
        w.send(b"set q 0 0 1 noreply\r\na\r\nset q 7 0 1 noreply\r\nb\r\n")
        assert w.call(b"version\r\n") == f"VERSION {WIRE_VERSION}\r\n".encode()
        assert w.call(b"get q\r\n") == value("q", b"a")
        assert w.call(b"get q\r\n") == value("q", b"b", 7)


def test_noreply_refused_set_sends_nothing(tmp_path: Path) -> None:
    srv = start_with_config(tmp_path, "[queues.one]\nmax_items = 1\n")
    try:
        with Wire(srv.port) as w:
            w.send(b"set one 0 0 1 noreply\r\na\r\nset one 0 0 1 noreply\r\nb\r\n")
            assert w.call(b"version\r\n") == f"VERSION {WIRE_VERSION}\r\n".encode()
            assert w.call(b"get one\r\n") == value("one", b"a")
            assert w.call(b"get one\r\n") == b"END\r\n"
    finally:
        assert srv.stop() == 0


# -- expiry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exptime", "alive"),
    [
        pytest.param(0, True, id="zero-never"),
        pytest.param(3600, True, id="relative-hour"),
        pytest.param(999_999, True, id="relative-just-below-1e6"),
        pytest.param(-1, False, id="negative"),
        pytest.param(1_000_000, False, id="absolute-1970"),
        pytest.param(int(time.time()) - 60, False, id="absolute-past"),
        pytest.param(int(time.time()) + 3600, True, id="absolute-future"),
    ],
)
def test_set_expiry(server: ServerProcess, exptime: int, alive: bool) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"data", exptime=exptime)
        assert w.call(b"get q\r\n") == (value("q", b"data") if alive else b"END\r\n")


def test_relative_expiry_removes_item_after_its_time(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"short", exptime=1)
        put(w, "other", b"long", exptime=60)
        started = time.monotonic()
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"short")
        wait_until(lambda: w.call(b"get q/peek\r\n") == b"END\r\n", 60, what="expiry")
        assert time.monotonic() - started >= 0.9
        assert w.call(b"get other\r\n") == value("other", b"long")
    assert server_stats(server.port)["queue_q_expired_items"] == "1"


def test_flush_expired_returns_bare_count(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        # One send: the set and the flush run back to back, before any background sweep.
        w.send(b"set q 0 -1 1\r\na\r\nflush_expired q\r\n")
        assert w.reply() == b"STORED\r\n"
        assert w.reply() == b"1\r\n"
        assert w.call(b"flush_expired q\r\n") == b"0\r\n"
        assert w.call(b"flush_expired never_seen\r\n") == b"0\r\n"


def test_flush_all_expired_counts_over_all_queues(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        w.send(
            b"set a 0 -1 1\r\na\r\nset b 0 -5 1\r\nb\r\nset c 0 0 1\r\nc\r\nflush_all_expired\r\n"
        )
        assert [w.reply() for _ in range(3)] == [b"STORED\r\n"] * 3
        assert w.reply() == b"2\r\n"
        assert w.call(b"flush_all_expired\r\n") == b"0\r\n"
        assert w.call(b"get c\r\n") == value("c", b"c")


# -- get options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "q",
        "q/open",
        "q/t=500/open",
        "q/open/t=500",
        "q/close/open",
        "q/open/close",
        "q/t=10/close/open",
        "q/close/t=10/open",
        "q/peek",
        "q/peek/t=10",
        "q/t=10/peek",
        "q/t=0",
        "q/t=-5",
        "q/unknown/open",
    ],
)
def test_value_line_echoes_key_exactly(server: ServerProcess, key: str) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"hello", flags=3)
        assert w.call(f"get {key}\r\n".encode()) == value(key, b"hello", 3)


def test_get_with_timeout_on_empty_queue_returns_end(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        started = time.monotonic()
        assert w.call(b"get q/t=300\r\n") == b"END\r\n"
        assert 0.298 <= time.monotonic() - started < 2.3


def test_get_with_timeout_gets_item_set_meanwhile(server: ServerProcess) -> None:
    with Wire(server.port) as reader, Wire(server.port) as writer:
        reader.send(b"gets q/t=5000\r\n")
        wait_until(lambda: server_stats(server.port).get("queue_q_waiters") == "1", 60)
        put(writer, "q", b"late")
        assert reader.reply() == value("q/t=5000", b"late")


def test_open_close_confirms(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"a")
        put(w, "q", b"b")
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/close/open\r\n") == value("q/close/open", b"b")
        assert w.call(b"get q/close\r\n") == b"END\r\n"
        stats = server_stats(server.port)
        assert (stats["queue_q_items"], stats["queue_q_open_transactions"]) == ("0", "0")
    # Both were confirmed, so a disconnect brings nothing back.
    with Wire(server.port) as w:
        assert w.call(b"get q\r\n") == b"END\r\n"


def test_abort_returns_item_to_head(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        for data in (b"a", b"b"):
            put(w, "q", data)
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/abort\r\n") == b"END\r\n"
        assert w.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"get q/t=10/abort\r\n") == b"END\r\n"
        assert w.call(b"get q\r\n") == value("q", b"a")
        assert w.call(b"get q\r\n") == value("q", b"b")
    assert server_stats(server.port)["queue_q_canceled_transactions"] == "2"


def test_peek_does_not_remove(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"get q/peek\r\n") == b"END\r\n"
        put(w, "q", b"a", flags=9)
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"a", 9)
        assert w.call(b"get q/peek\r\n") == value("q/peek", b"a", 9)
        assert w.call(b"get q\r\n") == value("q", b"a", 9)
        assert w.call(b"get q/peek\r\n") == b"END\r\n"


def test_peek_with_timeout_waits_for_an_item(server: ServerProcess) -> None:
    with Wire(server.port) as reader, Wire(server.port) as writer:
        reader.send(b"get q/peek/t=5000\r\n")
        wait_until(lambda: server_stats(server.port).get("queue_q_waiters") == "1", 60)
        put(writer, "q", b"x")
        assert reader.reply() == value("q/peek/t=5000", b"x")
        assert writer.call(b"get q\r\n") == value("q", b"x")


# -- maintenance --------------------------------------------------------------------------------


def test_delete_removes_queue_and_journal(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "gone", b"a")
        assert (server.data_dir / segment_name("gone", 1)).exists()
        assert w.call(b"delete gone\r\n") == b"DELETED\r\n"
        assert not (server.data_dir / segment_name("gone", 1)).exists()
        assert "queue_gone_items" not in server_stats(server.port)
        assert w.call(b"delete never_existed\r\n") == b"DELETED\r\n"
        assert w.call(b"get gone\r\n") == b"END\r\n"


def test_delete_noreply(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "gone", b"a")
        w.send(b"delete gone noreply\r\n")
        assert w.call(b"version\r\n") == f"VERSION {WIRE_VERSION}\r\n".encode()
        assert w.call(b"get gone\r\n") == b"END\r\n"


def test_flush_empties_queue_and_leaves_open_reads(server: ServerProcess) -> None:
    with Wire(server.port) as w, Wire(server.port) as other:
        for data in (b"a", b"b", b"c"):
            put(w, "q", data)
        put(w, "keep", b"k")
        assert other.call(b"get q/open\r\n") == value("q/open", b"a")
        assert w.call(b"flush q\r\n") == b"END\r\n"
        assert w.call(b"get q\r\n") == b"END\r\n"
        assert w.call(b"get keep\r\n") == value("keep", b"k")
        assert server_stats(server.port)["queue_q_open_transactions"] == "1"
    # The open read survived the flush and comes back when its connection ends.
    with Wire(server.port) as w:
        wait_until(lambda: w.call(b"get q/peek\r\n") == value("q/peek", b"a"), 60)


def test_flush_all(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        for queue in ("a", "b", "c"):
            put(w, queue, b"x")
        assert w.call(b"flush_all\r\n") == b"Flushed all queues.\r\n"
        assert [w.call(f"get {q}\r\n".encode()) for q in "abc"] == [b"END\r\n"] * 3
        assert w.call(b"flush_all\r\n") == b"Flushed all queues.\r\n"


# -- stats, dump_stats, version -----------------------------------------------------------------

GLOBAL_STATS = [
    "uptime", "time", "version", "curr_items", "total_items", "bytes", "curr_connections",
    "total_connections", "cmd_get", "cmd_set", "cmd_peek", "get_hits", "get_misses",
    "bytes_read", "bytes_written", "queue_creates", "queue_deletes", "queue_expires",
]  # fmt: skip
QUEUE_STATS = [
    "items", "bytes", "total_items", "logsize", "expired_items", "mem_items", "mem_bytes",
    "age", "discarded", "waiters", "open_transactions", "transactions",
    "canceled_transactions", "total_flushes",
]  # fmt: skip


def test_stats_format_and_values(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        for data in (b"12345", b"67890"):
            put(w, "work", data)
        assert w.call(b"get work\r\n") == value("work", b"12345")
        assert w.call(b"get work/peek\r\n") == value("work/peek", b"67890")
        assert w.call(b"get empty\r\n") == b"END\r\n"
        reply = w.call(b"stats\r\n")
    assert reply.endswith(b"\r\nEND\r\n")
    lines = reply[: -len(b"END\r\n")].decode().split("\r\n")[:-1]
    assert all(line.startswith("STAT ") and len(line.split(" ")) == 3 for line in lines)
    names = [line.split(" ")[1] for line in lines]
    assert names[: len(GLOBAL_STATS)] == GLOBAL_STATS
    stats = {line.split(" ")[1]: line.split(" ")[2] for line in lines}
    for stat in QUEUE_STATS:
        assert f"queue_work_{stat}" in stats
        assert f"queue_empty_{stat}" in stats
    assert stats["version"] == __version__
    assert abs(int(stats["time"]) - time.time()) < 5
    assert (stats["curr_items"], stats["total_items"], stats["bytes"]) == ("1", "2", "5")
    assert (stats["cmd_set"], stats["cmd_get"], stats["cmd_peek"]) == ("2", "2", "1")
    assert (stats["get_hits"], stats["get_misses"]) == ("2", "1")
    assert (stats["queue_work_items"], stats["queue_work_bytes"]) == ("1", "5")
    assert stats["queue_work_total_items"] == "2"
    assert int(stats["queue_work_logsize"]) > 10
    assert stats["queue_creates"] == "2"
    assert stats["curr_connections"] == "1"


def test_stats_ignores_arguments(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        reply = w.call(b"stats detail dump\r\n")
    assert reply.startswith(b"STAT uptime ") and reply.endswith(b"END\r\n")


def test_dump_stats_brace_format(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        # No queue: END alone, no blank line before it.
        assert w.call(b"dump_stats\r\n") == b"END\r\n"
        assert w.call(b"dump_stats nosuch\r\n") == b"END\r\n"
        put(w, "b", b"xyz")
        put(w, "a", b"1")
        reply = w.call(b"dump_stats\r\n")
        only_b = w.call(b"dump_stats b\r\n")
    assert reply.endswith(b"}\r\nEND\r\n")
    blocks = reply[: -len(b"\r\nEND\r\n")].decode().split("\r\n}\r\n")
    assert [b.split("\r\n")[0] for b in blocks] == ["queue 'a' {", "queue 'b' {"]
    body_b = blocks[1].rstrip("}").rstrip("\r\n").split("\r\n")[1:]
    assert all(line.startswith("  ") and "=" in line for line in body_b)
    pairs = dict(line.strip().split("=", 1) for line in body_b)
    assert (pairs["items"], pairs["bytes"]) == ("1", "3")
    # The same block, but for the head's age, which grows between the two calls.
    assert _ageless(only_b) == _ageless(reply[reply.index(b"queue 'b'") :])


def _ageless(reply: bytes) -> list[bytes]:
    return [line for line in reply.split(b"\r\n") if not line.strip().startswith(b"oldest_age")]


def test_version(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"version\r\n") == f"VERSION {WIRE_VERSION}\r\n".encode()


# -- reload, shutdown, quit -----------------------------------------------------------------------


def test_reload_applies_changed_queue_settings(tmp_path: Path) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[queues.r]\nmax_items = 1\n")
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    try:
        with Wire(srv.port) as w:
            put(w, "r", b"1")
            assert set_reply(w, "r", b"2") == b"NOT_STORED\r\n"
            conf.write_text("[queues.r]\nmax_items = 3\n")
            assert w.call(b"reload\r\n") == b"Reloaded config.\r\n"
            put(w, "r", b"2")
            put(w, "r", b"3")
            assert set_reply(w, "r", b"4") == b"NOT_STORED\r\n"
            assert w.call(b"RELOAD\r\n") == b"Reloaded config.\r\n"
    finally:
        assert srv.stop() == 0


def test_reload_without_config_file(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"reload\r\n") == b"Reloaded config.\r\n"
        put(w, "q", b"x")


def test_shutdown_closes_without_reply_and_data_survives(shutdown_server: ServerProcess) -> None:
    server = shutdown_server
    with Wire(server.port) as w:
        put(w, "keep", b"survivor", flags=5)
        w.send(b"shutdown\r\n")
        assert w.at_eof(10)
        assert w.buf == b""
    assert server.proc is not None
    assert server.proc.wait(15) == 0
    server.start()
    with Wire(server.port) as w:
        assert w.call(b"get keep\r\n") == value("keep", b"survivor", 5)


def test_quit_closes_without_reply(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        w.send(b"set q 0 0 1\r\nx\r\nquit\r\nversion\r\n")
        assert w.reply() == b"STORED\r\n"
        assert w.at_eof()
        assert w.buf == b""
    with Wire(server.port) as w:
        assert w.call(b"get q\r\n") == value("q", b"x")


# -- monitor and confirm ------------------------------------------------------------------------


def read_monitor(w: Wire) -> list[bytes]:
    """Items of a monitor stream: VALUE blocks each with its END, then one more END."""
    items: list[bytes] = []
    for _ in range(1000):
        reply = w.reply()
        if reply == b"END\r\n":
            return items
        assert reply.startswith(b"VALUE ") and reply.endswith(b"\r\nEND\r\n"), reply
        items.append(reply)
    raise AssertionError("monitor stream did not end")


def test_monitor_default_limit_is_one_open_read(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        for data in (b"a", b"b", b"c"):
            put(w, "m", data)
        w.send(b"monitor m 1\r\n")
        assert read_monitor(w) == [value("m", b"a")]
        assert w.call(b"confirm m 1\r\n") == b"END\r\n"
        assert w.call(b"confirm m 1\r\n") == b"ERROR\r\n"
    with Wire(server.port) as w:
        assert w.call(b"get m\r\n") == value("m", b"b")


def test_monitor_streams_up_to_max_items(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", "--max-open-reads", "10").start()
    try:
        with Wire(srv.port) as w:
            for i in range(5):
                put(w, "m", b"%d" % i)
            w.send(b"MONITOR m 2 3\r\n")
            assert read_monitor(w) == [value("m", b"%d" % i) for i in range(3)]
            assert w.call(b"confirm m 4\r\n") == b"ERROR\r\n"  # more than open: none confirmed
            assert w.call(b"confirm m 3\r\n") == b"END\r\n"
            assert w.call(b"confirm m 1\r\n") == b"ERROR\r\n"
            assert w.call(b"get m\r\n") == value("m", b"3")
    finally:
        assert srv.stop() == 0


def test_monitor_waits_for_items_within_its_window(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", "--max-open-reads", "10").start()
    try:
        with Wire(srv.port) as w, Wire(srv.port) as writer:
            started = time.monotonic()
            w.send(b"monitor m 1 5\r\n")
            wait_until(lambda: server_stats(srv.port).get("queue_m_waiters") == "1", 60)
            put(writer, "m", b"late")
            assert read_monitor(w) == [value("m", b"late")]
            assert 0.9 <= time.monotonic() - started < 3
            # The monitored item is an open read: confirm it, then nothing comes back.
            assert w.call(b"confirm m 1\r\n") == b"END\r\n"
        with Wire(srv.port) as w:
            assert w.call(b"get m\r\n") == b"END\r\n"
    finally:
        assert srv.stop() == 0


def test_confirm_without_open_reads_is_error_and_keeps_connection(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"confirm q 1\r\n") == b"ERROR\r\n"
        put(w, "q", b"x")
        assert w.call(b"confirm q 1\r\n") == b"ERROR\r\n"
        assert w.call(b"get q/open\r\n") == value("q/open", b"x")
        assert w.call(b"confirm q 0\r\n") == b"ERROR\r\n"
        assert w.call(b"confirm q 2\r\n") == b"ERROR\r\n"
        assert w.call(b"confirm q 1\r\n") == b"END\r\n"
    with Wire(server.port) as w:
        assert w.call(b"get q\r\n") == b"END\r\n"


def test_unconfirmed_monitor_items_come_back(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "m", b"a")
        w.send(b"monitor m 1\r\n")
        assert read_monitor(w) == [value("m", b"a")]
    with Wire(server.port) as w:
        wait_until(lambda: w.call(b"get m/peek\r\n") == value("m/peek", b"a"), 60)


# -- fanout ---------------------------------------------------------------------------------------


def test_fanout_copies_to_known_children(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "p", b"before")
        assert w.call(b"get p+c1\r\n") == b"END\r\n"  # first reference registers the child
        put(w, "p+c2", b"own")  # so does a set on the child
        put(w, "p", b"after", flags=4)
        assert w.call(b"get p\r\n") == value("p", b"before")
        assert w.call(b"get p\r\n") == value("p", b"after", 4)
        assert w.call(b"get p+c1\r\n") == value("p+c1", b"after", 4)
        assert w.call(b"get p+c2\r\n") == value("p+c2", b"own")
        assert w.call(b"get p+c2\r\n") == value("p+c2", b"after", 4)
        assert w.call(b"get p+c3\r\n") == b"END\r\n"  # not known when the set happened
        assert server_stats(server.port)["queue_p_children"] == "p+c1,p+c2,p+c3"


def test_fanout_delete_detaches_child(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"get p\r\n") == b"END\r\n"  # the parent exists, so it has stats
        assert w.call(b"get p+a\r\n") == b"END\r\n"
        assert w.call(b"get p+b\r\n") == b"END\r\n"
        assert w.call(b"delete p+a\r\n") == b"DELETED\r\n"
        assert server_stats(server.port)["queue_p_children"] == "p+b"
        put(w, "p", b"x")
        assert "queue_p+a_items" not in server_stats(server.port)
        assert w.call(b"get p+b\r\n") == value("p+b", b"x")
        assert w.call(b"get p+a\r\n") == b"END\r\n"


def test_fanout_children_known_again_after_restart(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"get p+c\r\n") == b"END\r\n"
        put(w, "p", b"one")
    assert server.stop() == 0
    server.start()
    with Wire(server.port) as w:
        put(w, "p", b"two")
        assert w.call(b"get p+c\r\n") == value("p+c", b"one")
        assert w.call(b"get p+c\r\n") == value("p+c", b"two")


# -- per-queue settings from a config file ----------------------------------------------------

QUEUE_SETTINGS = """
[queues.small]
max_items = 2

[queues.weighed]
max_bytes = 10

[queues.ring]
max_items = 2
discard_old_when_full = true

[queues.tiny]
max_item_size = 4

[queues.poison]
max_deliveries = 2

[queues.custom]
max_deliveries = 1
dead_letter = "graveyard"

[queues.slow]
open_timeout_ms = 300

[queues.delayed]
max_age_ms = 200
expire_to = "ready"

[queues.aged]
max_age_ms = 300
"""


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with a config file that sets every per-queue limit on some queue."""
    srv = start_with_config(tmp_path_factory.mktemp("configured"), QUEUE_SETTINGS)
    yield srv
    assert srv.stop() == 0, srv.log()


def test_max_items_not_stored(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        put(w, "small", b"1")
        put(w, "small", b"2")
        assert set_reply(w, "small", b"3") == b"NOT_STORED\r\n"
        assert w.call(b"get small\r\n") == value("small", b"1")
        put(w, "small", b"4")
        assert w.call(b"flush small\r\n") == b"END\r\n"


def test_max_bytes_not_stored(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        put(w, "weighed", b"123456")
        assert set_reply(w, "weighed", b"123456") == b"NOT_STORED\r\n"
        put(w, "weighed", b"1234")
        assert set_reply(w, "weighed", b"1") == b"NOT_STORED\r\n"
        assert w.call(b"flush weighed\r\n") == b"END\r\n"


def test_discard_old_when_full(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        for data in (b"a", b"b", b"c", b"d"):
            put(w, "ring", data)
        assert w.call(b"get ring\r\n") == value("ring", b"c")
        assert w.call(b"get ring\r\n") == value("ring", b"d")
        assert w.call(b"get ring\r\n") == b"END\r\n"
    assert server_stats(configured.port)["queue_ring_discarded"] == "2"


def test_max_item_size_not_stored(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        assert set_reply(w, "tiny", b"12345") == b"NOT_STORED\r\n"
        put(w, "tiny", b"1234")
        assert w.call(b"get tiny\r\n") == value("tiny", b"1234")


def test_delivery_limit_moves_poison_item_to_dead_letter_queue(
    configured: ServerProcess,
) -> None:
    with Wire(configured.port) as w:
        put(w, "poison", b"bad")
        put(w, "poison", b"good")
    for _ in range(2):
        # A worker that dies mid-job: open, then vanish without close.
        with Wire(configured.port) as w:
            assert w.call(b"get poison/open\r\n") == value("poison/open", b"bad")
        wait_until(
            lambda: server_stats(configured.port)["queue_poison_open_transactions"] == "0", 5
        )
    with Wire(configured.port) as w:
        assert w.call(b"get poison/open\r\n") == value("poison/open", b"good")
        assert w.call(b"get poison/close\r\n") == b"END\r\n"
        assert w.call(b"get poison_dead\r\n") == value("poison_dead", b"bad")
    assert server_stats(configured.port)["queue_poison_dead_lettered"] == "1"


def test_delivery_limit_with_named_dead_letter_queue(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        put(w, "custom", b"once", flags=8)
        assert w.call(b"get custom/open\r\n") == value("custom/open", b"once", 8)
        assert w.call(b"get custom/abort\r\n") == b"END\r\n"
        assert w.call(b"get custom/open\r\n") == b"END\r\n"
        assert w.call(b"get graveyard\r\n") == value("graveyard", b"once", 8)


def test_delivery_limit_does_not_touch_confirmed_items(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        for data in (b"1", b"2"):
            put(w, "custom", data)
        assert w.call(b"get custom/open\r\n") == value("custom/open", b"1")
        assert w.call(b"get custom/close/open\r\n") == value("custom/close/open", b"2")
        assert w.call(b"get custom/close\r\n") == b"END\r\n"
        assert w.call(b"get graveyard\r\n") == b"END\r\n"


def test_open_timeout_returns_read_to_queue(configured: ServerProcess) -> None:
    with Wire(configured.port) as stuck, Wire(configured.port) as other:
        put(stuck, "slow", b"job")
        assert stuck.call(b"get slow/open\r\n") == value("slow/open", b"job")
        started = time.monotonic()
        # The stuck worker keeps its connection; the read times out and goes to another.
        assert other.call(b"get slow/open/t=5000\r\n") == value("slow/open/t=5000", b"job")
        assert 0.25 <= time.monotonic() - started < 3
        # The stale close must not confirm the other connection's read.
        assert stuck.call(b"get slow/close\r\n") == b"END\r\n"
        assert server_stats(configured.port)["queue_slow_open_transactions"] == "1"
        assert other.call(b"get slow/close\r\n") == b"END\r\n"
        assert server_stats(configured.port)["queue_slow_open_transactions"] == "0"
    assert server_stats(configured.port)["queue_slow_timed_out_transactions"] == "1"


def test_expire_to_moves_expired_items(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        put(w, "delayed", b"later", flags=2)
        assert w.call(b"get ready\r\n") == b"END\r\n"
        # A delay queue: the item shows up on `ready` after max_age.
        assert w.call(b"get ready/t=5000\r\n") == value("ready/t=5000", b"later", 2)
        assert w.call(b"get delayed\r\n") == b"END\r\n"


def test_max_age_expires_items(configured: ServerProcess) -> None:
    with Wire(configured.port) as w:
        put(w, "aged", b"old", exptime=3600)
        started = time.monotonic()
        wait_until(lambda: w.call(b"get aged/peek\r\n") == b"END\r\n", 60, what="max_age")
        assert time.monotonic() - started >= 0.25
    assert server_stats(configured.port)["queue_aged_expired_items"] == "1"


def test_server_log_is_clean(configured: ServerProcess) -> None:
    # Runs last in this module (file order): nothing above left a traceback behind.
    with Wire(configured.port) as w:
        assert w.call(b"version\r\n").startswith(b"VERSION ")
    assert "Traceback" not in configured.log()


# -- framing under load ---------------------------------------------------------------------


def test_get_with_several_keys_is_refused_and_takes_nothing(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "a", b"1")
        put(w, "b", b"2")
        assert w.call(b"get a b\r\n") == b"CLIENT_ERROR get takes one key (one queue per get)\r\n"
        assert w.call(b"get a\r\n") == value("a", b"1")
        assert w.call(b"get b\r\n") == value("b", b"2")


def test_pipelined_burst_replies_in_order(server: ServerProcess) -> None:
    count = 2000
    sets = b"".join(b"set burst %d 0 %d\r\n%d\r\n" % (i, len(b"%d" % i), i) for i in range(count))
    gets = b"get burst\r\n" * count
    with Wire(server.port) as w:
        w.send(sets + gets)  # one write: the server sees many commands per read
        assert [w.reply() for _ in range(count)] == [b"STORED\r\n"] * count
        assert [w.reply() for _ in range(count)] == [
            value("burst", b"%d" % i, i) for i in range(count)
        ]
        assert w.call(b"get burst\r\n") == b"END\r\n"


def test_large_item_sent_in_small_pieces(server: ServerProcess) -> None:
    data = bytes(range(256)) * (4 << 12)  # 4 MiB
    message = b"set big 0 0 %d\r\n%s\r\n" % (len(data), data)
    with Wire(server.port) as w:
        for start in range(0, len(message), 7001):
            w.send(message[start : start + 7001])
        assert w.reply() == b"STORED\r\n"
        assert w.call(b"get big\r\n") == value("big", data)


def test_expired_item_aborted_is_discarded(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "e", b"x", exptime=1)
        set_at = time.monotonic()
        assert w.call(b"get e/open\r\n") == value("e/open", b"x")
        wait_until(lambda: time.monotonic() > set_at + 1.1, 60, what="the expiry to pass")
        assert w.call(b"get e/abort\r\n") == b"END\r\n"
        assert w.call(b"get e/peek\r\n") == b"END\r\n"


# -- per-queue fsync policy --------------------------------------------------------------------


def test_per_queue_fsync_policy(tmp_path: Path) -> None:
    srv = start_with_config(
        tmp_path,
        '[server]\nfsync = "always"\n'
        '[queues.fast]\nfsync = "never"\n'
        "[queues.batched]\nfsync = 100\n",
    )

    def fsyncs() -> int:
        return int(server_stats(srv.port)["fsyncs"])

    try:
        with Wire(srv.port) as w:
            before = fsyncs()
            for i in range(50):
                put(w, "fast", b"%d" % i)
            assert fsyncs() == before, "a `never` queue made the server fsync"
            for i in range(50):
                put(w, "safe", b"%d" % i)
            after_safe = fsyncs()
            # `always`: no STORED before an fsync covered it (one fsync may cover several).
            assert 1 <= after_safe - before <= 50
            for i in range(50):
                put(w, "batched", b"%d" % i)
            # `100` ms: nobody waits, a background fsync follows within about that time.
            wait_until(lambda: fsyncs() > after_safe, 60, what="the periodic fsync")
            assert server_stats(srv.port)["fsync_policy"] == "always"
    finally:
        assert srv.stop() == 0


def test_monitor_disconnect_returns_streamed_items(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", "--max-open-reads", "5").start()
    try:
        monitor = Wire(srv.port)
        with Wire(srv.port) as w:
            put(w, "m", b"a")
            monitor.send(b"monitor m 10 3\r\nversion\r\n")
            assert monitor.reply() == value("m", b"a")
            wait_until(lambda: server_stats(srv.port).get("queue_m_waiters") == "1", 60)
            put(w, "m", b"b")
            assert monitor.reply() == value("m", b"b")
            monitor.close()  # mid-stream, with two unconfirmed items
            wait_until(lambda: server_stats(srv.port)["queue_m_open_transactions"] == "0", 60)
            assert server_stats(srv.port)["queue_m_waiters"] == "0"
            assert [w.call(b"get m\r\n") for _ in range(3)] == [
                value("m", b"a"),
                value("m", b"b"),
                b"END\r\n",
            ]
    finally:
        assert srv.stop() == 0


def test_fanout_full_child_misses_its_copy_without_refusing_the_set(tmp_path: Path) -> None:
    srv = start_with_config(tmp_path, '[queues."p+slow"]\nmax_items = 1\n')
    try:
        with Wire(srv.port) as w:
            for child in (b"p+slow", b"p+fast"):
                assert w.call(b"get %s\r\n" % child) == b"END\r\n"
            put(w, "p", b"a")
            put(w, "p", b"b")  # p+slow is full: it misses b
            stats = server_stats(srv.port)
            assert stats["queue_p+slow_discarded"] == "1"
            assert [w.call(b"get p+slow\r\n"), w.call(b"get p+slow\r\n")] == [
                value("p+slow", b"a"),
                b"END\r\n",
            ]
            assert [w.call(b"get p+fast\r\n") for _ in range(2)] == [
                value("p+fast", b"a"),
                value("p+fast", b"b"),
            ]
            assert [w.call(b"get p\r\n") for _ in range(2)] == [value("p", b"a"), value("p", b"b")]
    finally:
        assert srv.stop() == 0


def test_fanout_full_parent_refuses_before_copying(tmp_path: Path) -> None:
    # NOT_STORED means stored nowhere: a client that retries must not fill the children twice.
    srv = start_with_config(tmp_path, '[queues.q]\nmax_items = 1\n[queues."q+c"]\nmax_items = 0\n')
    try:
        with Wire(srv.port) as w:
            assert w.call(b"get q+c\r\n") == b"END\r\n"
            put(w, "q", b"a")
            assert set_reply(w, "q", b"b") == b"NOT_STORED\r\n"
            assert [w.call(b"get q+c\r\n") for _ in range(2)] == [value("q+c", b"a"), b"END\r\n"]
            assert w.call(b"get q\r\n") == value("q", b"a")
    finally:
        assert srv.stop() == 0


def test_group_commit_shares_fsyncs(server: ServerProcess) -> None:
    # `always`: nothing is STORED before an fsync covers it, but writers waiting at the same
    # time share one fsync (group commit) instead of paying one each.
    def fsyncs() -> int:
        return int(server_stats(server.port)["fsyncs"])

    count = 2000
    before = fsyncs()
    with Wire(server.port) as w:
        w.send(b"".join(b"set pipe 0 0 %d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(count)))
        assert [w.reply() for _ in range(count)] == [b"STORED\r\n"] * count
    pipelined = fsyncs() - before
    assert 1 <= pipelined <= 20, pipelined

    per_client, clients = 200, 8

    def write(k: int) -> None:
        with Wire(server.port) as w:
            for _ in range(per_client):
                assert w.call(b"set c%d 0 0 1\r\nx\r\n" % k) == b"STORED\r\n"

    before = fsyncs()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for done in [pool.submit(write, k) for k in range(clients)]:
            done.result(timeout=60)
    concurrent = fsyncs() - before
    print(f"{count} pipelined sets: {pipelined} fsyncs; {per_client * clients} sets from "
          f"{clients} clients: {concurrent} fsyncs")  # fmt: skip
    assert 1 <= concurrent <= per_client * clients * 3 // 4
