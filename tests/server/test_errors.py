"""The error matrix: bad input gets an error line with a reason, never a crash.

Each case opens a fresh connection to one shared server, sends the bad bytes and checks the
reply word, its reason, and whether the connection was closed (framing lost, or Kestrel
closes) or stays usable. After every case a long-lived witness connection, which holds an
open read, must still be served: one client's garbage never hurts another client.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, connect, server_stats, serving, wait_until

from kestrelq import WIRE_VERSION
from kestrelq.journal.store import segment_name

VERSION = f"VERSION {WIRE_VERSION}\r\n".encode()
MAX_ITEM_BYTES = 1024
LONG_NAME = "n" * 129


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("errors")
    with serving(root / "data", "--max-item-bytes", str(MAX_ITEM_BYTES)) as proc:
        yield proc


@pytest.fixture(scope="module")
def witness(srv: ServerProcess) -> Iterator[Wire]:
    """A well-behaved client holding an open read on `witness` for the whole module."""
    with Wire(srv.port) as w:
        assert w.call(b"set witness 0 0 4\r\nheld\r\n") == b"STORED\r\n"
        assert w.call(b"get witness/open\r\n") == b"VALUE witness/open 0 4\r\nheld\r\nEND\r\n"
        yield w
        assert w.call(b"get witness/close\r\n") == b"END\r\n"


def tree(root: Path) -> set[str]:
    """The files a bad name could have created. Not counters.json: the server saves it (at
    most once a second) after any traffic, the witness's and earlier tests' included, so its
    first save can land between two looks whatever the command under test did."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name != "counters.json"}


def check_witness(srv: ServerProcess, witness: Wire) -> None:
    assert srv.proc is not None and srv.proc.poll() is None, srv.log()
    assert witness.call(b"version\r\n") == VERSION
    assert server_stats(srv.port)["queue_witness_open_transactions"] == "1"


def expect(w: Wire, word: str, reason: str, closes: bool) -> None:
    line = w.line()
    assert line.startswith(f"{word} ".encode()) and line.endswith(b"\r\n"), line
    assert reason in line.decode(), line
    if closes:
        assert w.at_eof(), "the server kept the connection open"
        assert w.buf == b"", "the server sent more after the error"
    else:
        assert w.call(b"version\r\n") == VERSION


CASES = [
    # (payload, word, reason, connection closed)
    pytest.param(b"\r\n", "CLIENT_ERROR", "empty", True, id="empty-line"),
    pytest.param(b"   \r\n", "CLIENT_ERROR", "empty", True, id="blank-line"),
    pytest.param(b"foo bar\r\n", "CLIENT_ERROR", "unknown command", True, id="unknown"),
    pytest.param(b"add q 0 0 1\r\n", "CLIENT_ERROR", "unknown command", True, id="add"),
    pytest.param(b"incr q 1\r\n", "CLIENT_ERROR", "unknown command", True, id="incr"),
    pytest.param(b"\x00\xff\x80\r\n", "CLIENT_ERROR", "unknown command", True, id="binary"),
    pytest.param(b"set q 0 0\r\n", "CLIENT_ERROR", "format", True, id="set-too-few"),
    pytest.param(b"set q 0 0 1 x y\r\n", "CLIENT_ERROR", "format", True, id="set-too-many"),
    pytest.param(b"set q 0 0 1 norply\r\n", "CLIENT_ERROR", "format", True, id="set-typo"),
    pytest.param(b"set q x 0 1\r\n", "CLIENT_ERROR", "flags", True, id="set-bad-flags"),
    pytest.param(b"set q -1 0 1\r\n", "CLIENT_ERROR", "flags", True, id="set-negative-flags"),
    pytest.param(b"set q 4294967296 0 1\r\n", "CLIENT_ERROR", "flags", True, id="flags-over"),
    pytest.param(b"set q 0 soon 1\r\n", "CLIENT_ERROR", "exptime", True, id="set-bad-exptime"),
    pytest.param(b"set q 0 0 many\r\n", "CLIENT_ERROR", "length", True, id="set-bad-length"),
    pytest.param(b"set q 0 0 -1\r\n", "CLIENT_ERROR", "length", True, id="set-negative-length"),
    pytest.param(b"set q 0 0 0x10\r\n", "CLIENT_ERROR", "length", True, id="set-hex-length"),
    pytest.param(b"get\r\n", "CLIENT_ERROR", "key", False, id="get-no-key"),
    pytest.param(b"gets\r\n", "CLIENT_ERROR", "key", False, id="gets-no-key"),
    pytest.param(b"get q/t=soon\r\n", "CLIENT_ERROR", "timeout", True, id="get-bad-timeout"),
    pytest.param(b"get q/t=9999999999\r\n", "CLIENT_ERROR", "timeout", True, id="get-t-overflow"),
    pytest.param(b"delete\r\n", "CLIENT_ERROR", "queue", False, id="delete-no-queue"),
    pytest.param(b"flush\r\n", "CLIENT_ERROR", "queue", False, id="flush-no-queue"),
    pytest.param(b"flush_expired\r\n", "CLIENT_ERROR", "queue", False, id="flush-expired-no-q"),
    pytest.param(b"monitor q\r\n", "CLIENT_ERROR", "monitor", False, id="monitor-no-seconds"),
    pytest.param(b"monitor q soon\r\n", "CLIENT_ERROR", "seconds", True, id="monitor-bad-secs"),
    pytest.param(b"confirm q\r\n", "CLIENT_ERROR", "confirm", False, id="confirm-no-count"),
    pytest.param(b"confirm q x\r\n", "CLIENT_ERROR", "count", True, id="confirm-bad-count"),
    pytest.param(b"set q 0 0 3\r\nabcde\r\n", "CLIENT_ERROR", "data chunk", True, id="no-crlf"),
    pytest.param(b"set q 0 0 3\r\nabc\n\n", "CLIENT_ERROR", "data chunk", True, id="lf-lf-end"),
]


@pytest.mark.parametrize(("payload", "word", "reason", "closes"), CASES)
def test_bad_input(
    srv: ServerProcess, witness: Wire, payload: bytes, word: str, reason: str, closes: bool
) -> None:
    with Wire(srv.port) as w:
        w.send(payload)
        expect(w, word, reason, closes)
    check_witness(srv, witness)


def test_refused_sets_store_nothing(srv: ServerProcess, witness: Wire) -> None:
    # Runs after the matrix above, whose refused sets all aimed at queue `q`.
    assert server_stats(srv.port).get("queue_q_items", "0") == "0"
    with Wire(srv.port) as w:
        assert w.call(b"get q\r\n") == b"END\r\n"
    check_witness(srv, witness)


# -- queue names ------------------------------------------------------------------------------

BAD_NAMES = [
    pytest.param(b"../x", id="dotdot-slash"),
    pytest.param(b"..", id="dotdot"),
    pytest.param(b"a.b", id="dot"),
    pytest.param(b"~x", id="tilde"),
    pytest.param(b"a/b", id="slash"),
    pytest.param(b"/etc/passwd", id="absolute"),
    pytest.param(LONG_NAME.encode(), id="129-bytes"),
    pytest.param("café".encode(), id="non-ascii-utf8"),
    pytest.param(b"caf\xe9", id="latin1"),
    pytest.param(b"a\x00b", id="nul"),
    pytest.param(b"a+b+c", id="two-plus"),
    pytest.param(b"+x", id="leading-plus"),
    pytest.param(b"x+", id="trailing-plus"),
    pytest.param(b"a:b", id="colon"),
    pytest.param(b"a\\b", id="backslash"),
    pytest.param(b"%2e%2e", id="percent"),
]


def name_reason(name: bytes) -> str:
    return "longer than 128" if len(name) > 128 else "bad queue name"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_queue_name_in_set_skips_data_and_keeps_connection(
    srv: ServerProcess, witness: Wire, name: bytes
) -> None:
    before = tree(srv.data_dir.parent)
    with Wire(srv.port) as w:
        # `set` takes the whole token as the name: a slash is refused, not an option.
        w.send(b"set " + name + b" 0 0 5\r\nhello\r\n")
        expect(w, "CLIENT_ERROR", name_reason(name), closes=False)
    assert tree(srv.data_dir.parent) == before
    check_witness(srv, witness)


# In `get`, options follow the first slash, so names with a slash are a different case (below).
GET_BAD_NAMES = [p for p in BAD_NAMES if p.id not in ("dotdot-slash", "slash", "absolute")]


@pytest.mark.parametrize("name", GET_BAD_NAMES)
def test_bad_queue_name_in_get_closes(srv: ServerProcess, witness: Wire, name: bytes) -> None:
    before = tree(srv.data_dir.parent)
    with Wire(srv.port) as w:
        w.send(b"get " + name + b"/open\r\n")
        expect(w, "CLIENT_ERROR", name_reason(name), closes=True)
    assert tree(srv.data_dir.parent) == before
    check_witness(srv, witness)


@pytest.mark.parametrize("command", [b"delete", b"flush", b"flush_expired", b"dump_stats"])
@pytest.mark.parametrize(
    "name", [b"../x", b"a.b", LONG_NAME.encode()], ids=["dotdot", "dot", "129"]
)
def test_bad_queue_name_in_other_commands(
    srv: ServerProcess, witness: Wire, command: bytes, name: bytes
) -> None:
    before = tree(srv.data_dir.parent)
    with Wire(srv.port) as w:
        w.send(command + b" " + name + b"\r\n")
        expect(w, "CLIENT_ERROR", name_reason(name), closes=False)
    assert tree(srv.data_dir.parent) == before
    check_witness(srv, witness)


def test_get_path_traversal_reads_the_first_segment_only(srv: ServerProcess) -> None:
    # `get ../x` names the queue `..` (options follow the first slash): refused, and nothing
    # is created anywhere.
    before = tree(srv.data_dir.parent)
    with Wire(srv.port) as w:
        w.send(b"get ../../etc/passwd\r\n")
        expect(w, "CLIENT_ERROR", "bad queue name", closes=True)
    assert tree(srv.data_dir.parent) == before


def test_128_byte_name_and_every_allowed_character_work(srv: ServerProcess) -> None:
    longest = "L" * 128
    odd = "Az09_-+child_-9"
    with Wire(srv.port) as w:
        for name in (longest, odd):
            assert w.call(f"set {name} 0 0 1\r\nx\r\n".encode()) == b"STORED\r\n"
            assert (
                w.call(f"get {name}\r\n".encode()) == f"VALUE {name} 0 1\r\nx\r\nEND\r\n".encode()
            )
    files = {p.name for p in srv.data_dir.iterdir()}
    assert {segment_name(longest, 1), segment_name(odd, 1)} <= files
    assert all(p.resolve().parent == srv.data_dir.resolve() for p in srv.data_dir.iterdir())


# -- limits -------------------------------------------------------------------------------------


def test_line_too_long_with_newline(srv: ServerProcess, witness: Wire) -> None:
    with Wire(srv.port) as w:
        w.send(b"get " + b"q" * 4000 + b"\r\n")
        expect(w, "CLIENT_ERROR", "line too long", closes=True)
    check_witness(srv, witness)


def test_line_too_long_without_newline_is_refused_before_it_ends(
    srv: ServerProcess, witness: Wire
) -> None:
    with Wire(srv.port) as w:
        # No newline ever comes: the server must not buffer without bound.
        w.send(b"x" * 100_000)
        expect(w, "CLIENT_ERROR", "line too long", closes=True)
    check_witness(srv, witness)


def test_oversize_item_is_refused_at_once_and_the_connection_closed(
    srv: ServerProcess, witness: Wire
) -> None:
    with Wire(srv.port) as w:
        # Only the command line: the server must answer without waiting for the block.
        w.send(b"set big 0 0 999999999999\r\n")
        line = w.line()
        assert line == b"SERVER_ERROR object too large for cache (999999999999 > %d bytes)\r\n" % (
            MAX_ITEM_BYTES
        )
        assert w.at_eof()
    with Wire(srv.port) as w:
        size = MAX_ITEM_BYTES * 3
        w.send(b"set big 0 0 %d\r\n" % size + b"z" * size + b"\r\nversion\r\n")
        assert w.line().startswith(b"SERVER_ERROR object too large")
        assert w.at_eof() and w.buf == b""  # the version after it was never run
    assert server_stats(srv.port).get("queue_big_items", "0") == "0"
    check_witness(srv, witness)


def test_item_of_exactly_max_item_bytes_is_stored(srv: ServerProcess) -> None:
    data = b"e" * MAX_ITEM_BYTES
    with Wire(srv.port) as w:
        assert w.call(b"set edge 0 0 %d\r\n%s\r\n" % (len(data), data)) == b"STORED\r\n"
        assert w.call(b"get edge\r\n") == b"VALUE edge 0 %d\r\n%s\r\nEND\r\n" % (len(data), data)


def test_too_many_connections(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", "--max-connections", "2").start()
    try:
        first, second = Wire(proc.port), Wire(proc.port)
        assert first.call(b"version\r\n") == VERSION
        assert second.call(b"version\r\n") == VERSION
        with Wire(proc.port) as third:
            assert third.line() == b"SERVER_ERROR too many connections\r\n"
            assert third.at_eof()
        assert first.call(b"version\r\n") == VERSION
        second.close()

        def admitted() -> bool:
            with Wire(proc.port) as w:
                try:
                    return w.call(b"version\r\n") == VERSION
                except ConnectionError:
                    return False

        wait_until(admitted, 60, what="a free connection slot")
        first.close()
    finally:
        assert proc.stop() == 0


# -- reliable-read misuse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    ["peek/open", "open/peek", "peek/close", "abort/open", "close/abort", "abort/peek",
     "t=10/peek/abort", "open/t=5/abort"],
)  # fmt: skip
def test_forbidden_option_mix_closes(srv: ServerProcess, witness: Wire, options: str) -> None:
    with Wire(srv.port) as w:
        w.send(f"get mix/{options}\r\n".encode())
        expect(w, "CLIENT_ERROR", "cannot be combined", closes=True)
    check_witness(srv, witness)


@pytest.mark.parametrize("key", [b"/open", b"/", b"/t=10"], ids=["slash-open", "slash", "slash-t"])
def test_empty_queue_name_in_get_closes(srv: ServerProcess, witness: Wire, key: bytes) -> None:
    with Wire(srv.port) as w:
        w.send(b"get " + key + b"\r\n")
        expect(w, "CLIENT_ERROR", "empty queue name", closes=True)
    check_witness(srv, witness)


@pytest.mark.parametrize(
    "second", [b"get twice/open\r\n", b"get twice/t=10/open\r\n", b"get twice\r\n"],
    ids=["second-open", "second-open-t", "plain-get"],
)  # fmt: skip
def test_misuse_with_open_read_is_error_close_and_item_back_at_head(
    srv: ServerProcess, witness: Wire, second: bytes
) -> None:
    with Wire(srv.port) as w:
        assert w.call(b"set twice 0 0 5\r\nfirst\r\nset twice 0 0 6\r\nsecond\r\n") == b"STORED\r\n"
        assert w.reply() == b"STORED\r\n"
        assert w.call(b"get twice/open\r\n") == b"VALUE twice/open 0 5\r\nfirst\r\nEND\r\n"
        w.send(second)
        line = w.line()
        assert line.startswith(b"ERROR") and line.endswith(b"\r\n"), line
        assert w.at_eof()
    with Wire(srv.port) as w:

        def first_back() -> bool:
            return w.call(b"get twice/peek\r\n") == b"VALUE twice/peek 0 5\r\nfirst\r\nEND\r\n"

        wait_until(first_back, 60, what="the open read back at the head")
        assert w.call(b"flush twice\r\n") == b"END\r\n"
    check_witness(srv, witness)


def test_errors_leave_no_traceback(srv: ServerProcess, witness: Wire) -> None:
    check_witness(srv, witness)
    assert "Traceback" not in srv.log()


def test_running_out_of_file_descriptors_does_not_stop_the_server(tmp_path: Path) -> None:
    # A connection flood (or many queues) can exhaust the process's descriptors; that must
    # cost the extra clients, never the server and the data of the clients it already has.
    proc = ServerProcess(tmp_path / "data").start()
    assert proc.proc is not None
    pid = proc.proc.pid
    try:
        with Wire(proc.port) as keeper:
            assert keeper.call(b"set q 0 0 1\r\na\r\n") == b"STORED\r\n"
            in_use = len(os.listdir(f"/proc/{pid}/fd"))
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 4, hard))
            flood = [Wire(proc.port) for _ in range(20)]
            try:
                reply = keeper.call(b"set q 0 0 1\r\nb\r\n")
                assert reply == b"STORED\r\n" or reply.startswith(b"SERVER_ERROR "), reply
                assert proc.proc.poll() is None, proc.log()
            finally:
                for w in flood:
                    w.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            assert keeper.call(b"get q\r\n") == b"VALUE q 0 1\r\na\r\nEND\r\n"
        with Wire(proc.port) as w:
            assert w.call(b"version\r\n") == VERSION
    finally:
        if proc.proc.poll() is None:
            assert proc.stop() == 0


def test_new_queue_without_a_free_descriptor_gets_an_error_reply(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", "--fsync", "never").start()
    assert proc.proc is not None
    pid = proc.proc.pid

    def fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    try:
        with Wire(proc.port) as w:
            assert w.call(b"set q 0 0 1\r\na\r\n") == b"STORED\r\n"
            with_q_open = fds()
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (with_q_open, hard))
            try:
                # No descriptor left: the idle journal of q is closed to make room.
                assert w.call(b"set brand_new 0 0 1\r\nx\r\n") == b"STORED\r\n"
                assert w.call(b"set q 0 0 1\r\nb\r\n") == b"STORED\r\n"
                # No journal file open, none to close: refuse with a reason, stay in step.
                wait_until(lambda: fds() < with_q_open, 60, what="idle journals closed")
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (fds(), hard))
                reply = w.call(b"set newest 0 0 1\r\nx\r\n")
                assert reply.startswith(b"SERVER_ERROR "), reply
                assert w.call(b"version\r\n").startswith(b"VERSION ")
            finally:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            assert w.call(b"set newest 0 0 1\r\nx\r\n") == b"STORED\r\n"
    finally:
        assert proc.stop() == 0


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_client_that_never_reads_cannot_grow_server_memory(tmp_path: Path) -> None:
    # `stats` is 7 bytes in and ~10 KB out: without backpressure on the output, 200 KB of
    # pipelined requests from a client that never reads cost the server ~300 MB.
    proc = ServerProcess(tmp_path / "data", "--fsync", "never").start()
    assert proc.proc is not None
    pid = proc.proc.pid
    try:
        with Wire(proc.port) as w:
            for i in range(20):
                assert w.call(b"set q%d 0 0 1\r\nx\r\n" % i) == b"STORED\r\n"
            assert len(w.call(b"stats\r\n")) > 8000
        baseline = _rss_bytes(pid)
        flood = connect(proc.port)
        try:
            flood.setblocking(False)
            payload = b"stats\r\n" * 30_000
            sent = 0
            deadline = time.monotonic() + 5
            peak = baseline
            while time.monotonic() < deadline:
                if sent < len(payload):
                    try:
                        sent += flood.send(payload[sent : sent + 65536])
                    except BlockingIOError:
                        pass  # the server stopped reading us: that is the point
                peak = max(peak, _rss_bytes(pid))
                time.sleep(0.01)
            # Meanwhile other clients are served.
            with Wire(proc.port) as w:
                assert w.call(b"version\r\n") == VERSION
            growth_mb = (peak - baseline) / 2**20
            print(f"sent {sent} B of stats requests unread; server memory grew {growth_mb:.0f} MB")
            assert growth_mb < 64
        finally:
            flood.close()
    finally:
        assert proc.stop() == 0


def test_sigterm_is_not_held_up_by_a_client_that_never_reads(tmp_path: Path) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text('[server]\nfsync = "never"\nshutdown_timeout_s = 1.0\n')
    proc = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    assert proc.proc is not None
    # A reply larger than the kernel can hold for a reader that never reads (its receive
    # buffer pinned small, the server's send buffer at most tcp_wmem's maximum): whatever the
    # timing, that reply can never be delivered, so only the shutdown timeout ends it.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    big = wmem_max + (1 << 20)
    holder = Wire(proc.port)
    flood = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flood.connect(("127.0.0.1", proc.port))
    try:
        for i in range(20):
            assert holder.call(b"set q%d 0 0 1\r\nx\r\n" % i) == b"STORED\r\n"
        assert holder.call(b"set big 0 0 %d\r\n%s\r\n" % (big, b"b" * big)) == b"STORED\r\n"
        assert holder.call(b"get q0/open\r\n") == b"VALUE q0/open 0 1\r\nx\r\nEND\r\n"
        flood.sendall(b"get big/peek\r\n")
        wait_until(lambda: server_stats(proc.port)["cmd_peek"] == "1", 60, what="the peek run")
        proc.proc.terminate()
        # A generous bound for a liveness check: held up, the server would never exit.
        assert proc.proc.wait(60) == 0
        assert "1 connections did not close in time" in proc.log()
    finally:
        flood.close()
        holder.close()
    proc.start()
    with Wire(proc.port) as w:
        assert w.call(b"get q0\r\n") == b"VALUE q0 0 1\r\nx\r\nEND\r\n"  # the open read is back
    assert proc.stop() == 0
