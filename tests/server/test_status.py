"""STATUS: what UP, READONLY and QUIESCENT refuse, on the rule itself and on a real server.

The rule (`kestrelq.server.status.check`) is tested directly for every command kind; then each
status through raw sockets against a real server process: the words on the wire, the close
after a refusal, the confirm that a QUIESCENT server still takes, and the status surviving a
restart.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, put, value, wait_until

from kestrelq.client import Client
from kestrelq.errors import ConfigError, ServerQuiescent, ServerReadOnly, ServerUnavailable
from kestrelq.protocol import commands as c
from kestrelq.protocol.commands import ServerStatus
from kestrelq.protocol.parser import parse_get_key
from kestrelq.server import status
from kestrelq.server.connection import error_reply

UP, READONLY, QUIESCENT = ServerStatus.UP, ServerStatus.READONLY, ServerStatus.QUIESCENT
READ_ONLY = b"SERVER_ERROR server is read-only\r\n"
QUIET = b"SERVER_ERROR server is quiescent\r\n"

# One of each command kind, and which statuses refuse it (with which error).
WRITES: list[c.Command] = [
    c.Set("q", 0, 0, b"x"),
    c.Delete("q"),
    c.Flush("q"),
    c.FlushAll(),
    c.FlushExpired("q"),
    c.FlushAllExpired(),
]
READS: list[c.Command] = [
    parse_get_key(b"q"),
    parse_get_key(b"q/open"),
    parse_get_key(b"q/close/open/t=10"),
    parse_get_key(b"q/peek"),
    c.Monitor("q", 1, 0),
]
ALWAYS: list[c.Command] = [
    parse_get_key(b"q/close"),
    parse_get_key(b"q/abort"),
    c.Confirm("q", 1),
    c.Stats(),
    c.DumpStats(()),
    c.Version(),
    c.Reload(),
    c.Shutdown(),
    c.Quit(),
    c.GetStatus(),
    c.SetStatus(UP),
]


def test_the_lists_cover_every_command_kind() -> None:
    kinds = {type(cmd) for cmd in WRITES + READS + ALWAYS}
    assert kinds == set(typing.get_args(c.Command))


@pytest.mark.parametrize("cmd", WRITES + READS + ALWAYS, ids=repr)
def test_up_refuses_nothing(cmd: c.Command) -> None:
    status.check(UP, cmd)


@pytest.mark.parametrize("state", [READONLY, QUIESCENT])
@pytest.mark.parametrize("cmd", WRITES, ids=repr)
def test_writes_are_refused_unless_up(state: ServerStatus, cmd: c.Command) -> None:
    with pytest.raises(ServerReadOnly):
        status.check(state, cmd)


@pytest.mark.parametrize("cmd", READS, ids=repr)
def test_reads_are_served_read_only_and_refused_quiescent(cmd: c.Command) -> None:
    status.check(READONLY, cmd)
    with pytest.raises(ServerQuiescent):
        status.check(QUIESCENT, cmd)


@pytest.mark.parametrize("state", [READONLY, QUIESCENT])
@pytest.mark.parametrize("cmd", ALWAYS, ids=repr)
def test_confirms_give_backs_and_information_are_never_refused(
    state: ServerStatus, cmd: c.Command
) -> None:
    status.check(state, cmd)


def test_a_refusal_is_a_server_error_and_closes() -> None:
    assert error_reply(ServerReadOnly()) == (READ_ONLY, True)
    assert error_reply(ServerQuiescent()) == (QUIET, True)
    assert isinstance(ServerReadOnly(), ServerUnavailable)


def test_the_status_file_round_trips_and_a_bad_one_is_an_error(tmp_path: Path) -> None:
    assert status.load(tmp_path) is UP  # no file: UP
    for state in ServerStatus:
        status.save(tmp_path, state)
        assert status.load(tmp_path) is state
    assert (tmp_path / status.FILE_NAME).read_text() == "QUIESCENT\n"
    assert not (tmp_path / f"{status.FILE_NAME}.new").exists()
    (tmp_path / status.FILE_NAME).write_text("DOWN\n")
    with pytest.raises(ConfigError, match="'DOWN', not a status"):
        status.load(tmp_path)


# -- on a real server ---------------------------------------------------------------------------


def items(port: int, queue: str) -> tuple[int, int]:
    """(items, open reads) of `queue`."""
    with Client("127.0.0.1", port) as client:
        stats = client.dump_stats(queue).get(queue, {})
    return int(stats.get("items", 0)), int(stats.get("open_transactions", 0))


def test_status_answers_and_switches(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"status\r\n") == b"UP\r\n"
        assert w.call(b"status readonly\r\n") == b"END\r\n"
        assert w.call(b"status\r\n") == b"READONLY\r\n"
        assert w.call(b"STATUS Quiescent\r\n") == b"END\r\n"
        assert w.call(b"status\r\n") == b"QUIESCENT\r\n"
        # An unknown status changes nothing and keeps the connection.
        assert w.call(b"status down\r\n").startswith(b"CLIENT_ERROR unknown status 'down'")
        assert w.call(b"status up\r\n") == b"END\r\n"
        assert w.call(b"status\r\n") == b"UP\r\n"


@pytest.mark.parametrize(
    "write",
    [b"set q 0 0 1\r\ny\r\n", b"delete q\r\n", b"flush q\r\n", b"flush_all\r\n",
     b"flush_expired q\r\n", b"flush_all_expired\r\n"],
    ids=["set", "delete", "flush", "flush_all", "flush_expired", "flush_all_expired"],
)  # fmt: skip
def test_read_only_refuses_each_write_closes_and_changes_nothing(
    server: ServerProcess, write: bytes
) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"x")
        assert w.call(b"status readonly\r\n") == b"END\r\n"
    with Wire(server.port) as w:
        assert w.call(write) == READ_ONLY
        assert w.at_eof()
    assert items(server.port, "q") == (1, 0)


def test_read_only_serves_reads_until_empty(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"one")
        put(w, "q", b"two")
        assert w.call(b"status readonly\r\n") == b"END\r\n"
        assert w.call(b"get q/open\r\n") == value("q/open", b"one")
        assert w.call(b"get q/close/open\r\n") == value("q/close/open", b"two")
        assert w.call(b"get q/close/open/t=1\r\n") == b"END\r\n"
        assert w.call(b"get q/peek\r\n") == b"END\r\n"
    assert items(server.port, "q") == (0, 0)


def test_pymemcache_set_on_a_read_only_server_raises_server_error(server: ServerProcess) -> None:
    from pymemcache.exceptions import MemcacheServerError

    with Wire(server.port) as w:
        assert w.call(b"status readonly\r\n") == b"END\r\n"
    mc = server.client()
    try:
        with pytest.raises(MemcacheServerError, match="server is read-only"):
            mc.set("q", b"x", noreply=False)
    finally:
        mc.close()
    assert items(server.port, "q") == (0, 0)


def test_quiescent_confirms_then_refuses_the_next_read(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        put(w, "q", b"one")
        put(w, "q", b"two")
        assert w.call(b"get q/open\r\n") == value("q/open", b"one")
        with Wire(server.port) as admin:
            assert admin.call(b"status quiescent\r\n") == b"END\r\n"
        # The worker's next round trip: `one` is confirmed, `two` is not handed out.
        assert w.call(b"get q/close/open\r\n") == QUIET
        assert w.at_eof()
    assert items(server.port, "q") == (1, 0)
    with Wire(server.port) as w:
        assert w.call(b"monitor q 1\r\n") == QUIET
    with Wire(server.port) as w:
        assert w.call(b"get q/abort\r\n") == b"END\r\n"  # harmless, and not refused
        assert w.call(b"status up\r\n") == b"END\r\n"
        assert w.call(b"get q\r\n") == value("q", b"two")


def test_a_blocked_read_takes_nothing_once_quiescent(server: ServerProcess) -> None:
    with Wire(server.port) as w, Wire(server.port) as reader:
        put(w, "q", b"held")
        assert w.call(b"get q/open\r\n") == value("q/open", b"held")
        reader.send(b"get q/t=600000\r\n")
        wait_until(lambda: server_waiters(server.port, "q") == 1, 60, what="the reader waits")
        assert w.call(b"status quiescent\r\n") == b"END\r\n"
        # The give-back would wake the blocked reader; quiescent, it takes nothing.
        assert w.call(b"get q/abort\r\n") == b"END\r\n"
        assert items(server.port, "q") == (1, 0)
        assert w.call(b"status up\r\n") == b"END\r\n"
        # Up again: the next item that arrives wakes it, and it takes the head.
        put(w, "q", b"later")
        assert reader.reply() == value("q/t=600000", b"held")


def server_waiters(port: int, queue: str) -> int:
    with Client("127.0.0.1", port) as client:
        return int(client.dump_stats(queue).get(queue, {}).get("waiters", 0))


def test_the_status_survives_a_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with Client("127.0.0.1", server.port) as client:
            client.set("q", b"x")
            client.set_status(READONLY)
        assert server.stop() == 0
        server.start()
        with Client("127.0.0.1", server.port) as client:
            assert client.status() is READONLY
            assert client.get("q") is not None
        assert "server status READONLY" in server.log()
        with Wire(server.port) as w:
            assert w.call(b"set q 0 0 1\r\ny\r\n") == READ_ONLY
        with Client("127.0.0.1", server.port) as client:
            client.set_status(UP)
        server.kill()  # even after a crash, the last status set is the one kept
        server.start()
        with Client("127.0.0.1", server.port) as client:
            assert client.status() is UP
            assert client.set("q", b"y")
    finally:
        assert server.stop() == 0


def test_a_bad_status_file_stops_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / status.FILE_NAME).write_text("sideways\n")
    server = ServerProcess(data).start(wait=False)
    assert server.proc is not None
    assert server.proc.wait(60) == 2
    assert "not a status: write UP, READONLY or QUIESCENT" in server.log()
