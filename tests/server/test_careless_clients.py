"""Careless and hostile clients, against a real server: nothing lost, nothing held for ever.

pymemcache with its defaults sends `noreply` on set, delete and flush_all: whatever goes wrong
with such a command, no reply may come back, or the client reads it as the answer to its next
command (and the item that command took never reaches the application). Slow senders, clients
that never read, unfinished big sets and floods of `stats` must not exhaust the server or stall
its other clients. Every wait polls a condition with a generous deadline.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, connect, server_stats, wait_until
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheUnexpectedCloseError

from kestrelq import WIRE_VERSION

VERSION = f"VERSION {WIRE_VERSION}\r\n".encode()
MAX_ITEM = 1024


def start(tmp_path: Path, settings: str, *args: str) -> ServerProcess:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(settings)
    return ServerProcess(tmp_path / "data", "--config", str(conf), *args).start()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("careless")
    proc = start(root, f"[server]\nmax_item_bytes = {MAX_ITEM}\n\n[queues.one]\nmax_items = 1\n")
    yield proc
    assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log()


def pymemcache(srv: ServerProcess) -> Client:
    """pymemcache as users run it: default_noreply stays True."""
    return Client(("127.0.0.1", srv.port), timeout=10, connect_timeout=5)


def get_after_close(c: Client, key: str) -> object:
    """A get; if the server had closed the connection (after a set that could not be framed),
    pymemcache raises once and reconnects: the get was never run, so run it again."""
    try:
        return c.get(key)
    except (MemcacheUnexpectedCloseError, ConnectionError):
        return c.get(key)


# -- noreply means no reply -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue", "data", "closes"),
    [
        pytest.param("bad.name", b"hello", False, id="bad-name"),
        pytest.param("n" * 129, b"hello", False, id="name-too-long"),
        pytest.param("big", b"x" * (MAX_ITEM + 1), True, id="oversize"),
        pytest.param("one", b"second", False, id="full-queue"),
    ],
)
def test_refused_noreply_set_does_not_answer_the_next_get(
    srv: ServerProcess, queue: str, data: bytes, closes: bool
) -> None:
    ok = f"ok_{len(queue)}_{closes}"
    c = pymemcache(srv)
    try:
        assert c.set("one", b"first") is True  # noreply: no reply read
        c.set(ok, b"a")
        c.set(ok, b"b")
        c.set(queue, data)  # refused by the server, silently
        got = get_after_close(c, ok) if closes else c.get(ok)
        assert got == b"a"
        assert c.get(ok) == b"b"
        assert c.get(ok) is None
        assert c.get("one") == b"first"
        assert c.get("one") is None
    finally:
        c.close()
    if closes:
        assert "noreply command refused (closing the connection)" in srv.log()


def test_noreply_delete_and_flush_all_with_errors_stay_silent(srv: ServerProcess) -> None:
    c = pymemcache(srv)
    try:
        c.set("kept", b"1")
        c.delete("bad.name")  # refused (bad name): no reply
        assert c.get("kept") == b"1"
        c.set("kept", b"2")
        c.flush_all(delay=5)  # a delay is refused: no reply, nothing flushed
        assert c.get("kept") == b"2"
        c.set("kept", b"3")
        c.flush_all()  # `flush_all 0 noreply`: flushed, no reply
        c.set("kept", b"4")
        assert c.get("kept") == b"4"
    finally:
        c.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted at teardown (needs root: skipped without)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], check=False
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_noreply_set_on_a_full_disk_does_not_answer_the_next_get(
    tmp_path: Path, small_disk: Path
) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text('[server]\nfsync = "never"\ndisk_reserve_bytes = 262144\n')
    proc = ServerProcess(small_disk / "data", "--config", str(conf))
    proc.log_path = tmp_path / "server.log"  # the log must not live on the full disk
    proc.start()
    try:
        stored: list[bytes] = []
        with Wire(proc.port) as w:
            for size in (16 << 10, 1 << 10, 64, 1):
                while True:
                    data = (b"%06d" % len(stored) + b"d" * size)[:size]
                    if w.call(b"set full 0 0 %d\r\n%s\r\n" % (size, data)) != b"STORED\r\n":
                        break
                    stored.append(data)
        assert len(stored) > 2
        c = pymemcache(proc)
        try:
            c.set("full", b"refused, the disk is full")
            c.set("other", b"refused too")
            assert c.get("full") == stored[0]
            assert c.get("full") == stored[1]
        finally:
            c.close()
    finally:
        assert proc.stop() == 0, proc.log()


# -- one client cannot hold or exhaust the server ---------------------------------------------


def test_slow_senders_cannot_hold_every_connection_slot(tmp_path: Path) -> None:
    proc = start(tmp_path, "[server]\nread_timeout_s = 1.0\n", "--max-connections", "50")
    slow = [connect(proc.port) for _ in range(50)]
    try:
        for s in slow:
            s.send(b"g")  # a command begun, never finished: one byte at a time

        def refused() -> bool:
            with Wire(proc.port) as w:
                try:
                    return w.line() == b"SERVER_ERROR too many connections\r\n"
                except ConnectionError:
                    return False

        def dribble() -> None:
            for s in slow:
                try:
                    s.send(b"e")
                except OSError:
                    pass  # closed by the server: the point

        def admitted() -> bool:
            dribble()
            with Wire(proc.port) as w:
                try:
                    return w.call(b"version\r\n") == VERSION
                except ConnectionError:
                    return False

        # Every slot is taken (a client admitted now would be one of the slow ones)...
        wait_until(refused, 60, what="all 50 slots held")
        # ... and a well-behaved client gets one back: the slow ones were closed.
        wait_until(admitted, 30, what="a slot freed from the slow senders")
        stats = server_stats(proc.port)
        assert int(stats["timed_out_connections"]) >= 1
        assert "command incomplete after 1 s" in proc.log()
    finally:
        for s in slow:
            s.close()
        assert proc.stop() == 0, proc.log()


def test_idle_timeout_closes_idle_connections_not_blocked_reads(tmp_path: Path) -> None:
    proc = start(tmp_path, "[server]\nidle_timeout_s = 1.0\n")
    try:
        with Wire(proc.port) as idle, Wire(proc.port) as blocked:
            assert idle.call(b"version\r\n") == VERSION
            blocked.send(b"get work/t=120000\r\n")  # a worker waiting for a job
            assert idle.at_eof(timeout_s=30), "the idle connection was not closed"
            assert "idle for 1 s" in proc.log()
            with Wire(proc.port) as producer:
                assert producer.call(b"set work 0 0 3\r\njob\r\n") == b"STORED\r\n"
            assert blocked.reply() == b"VALUE work/t=120000 0 3\r\njob\r\nEND\r\n"
    finally:
        assert proc.stop() == 0, proc.log()


def test_client_that_never_reads_its_replies_is_closed(tmp_path: Path) -> None:
    proc = start(tmp_path, '[server]\nfsync = "never"\nread_timeout_s = 1.0\n')
    flood = connect(proc.port)
    try:
        with Wire(proc.port) as w:
            for i in range(50):
                assert w.call(b"set q%d 0 0 1\r\nx\r\n" % i) == b"STORED\r\n"
        flood.setblocking(False)
        payload = b"stats\r\n" * 50_000
        sent = 0

        def closed() -> bool:
            nonlocal sent
            try:
                sent += flood.send(payload[sent : sent + 65536])
            except BlockingIOError:
                pass  # the server stopped reading us
            except OSError:
                return True
            return server_stats(proc.port)["curr_connections"] == "1"  # only ours

        wait_until(closed, 30, what="the non-reading client closed")
        assert "replies unread for 1 s" in proc.log()
    finally:
        flood.close()
        assert proc.stop() == 0, proc.log()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_unfinished_big_sets_hold_at_most_the_pending_budget(tmp_path: Path) -> None:
    item, budget, conns = 8 << 20, 16 << 20, 8
    proc = start(
        tmp_path,
        f'[server]\nfsync = "never"\nmax_item_bytes = {item}\nmax_pending_bytes = {budget}\n',
    )
    assert proc.proc is not None
    pid = proc.proc.pid
    socks = [connect(proc.port, timeout_s=60) for _ in range(conns)]
    try:
        baseline = _rss_bytes(pid)
        head = b"set big 0 0 %d\r\n" % item
        body = b"b" * (item - (1 << 20))  # all but the last MiB
        sent = [0] * conns
        for s in socks:
            s.setblocking(False)
        payloads = [head + body for _ in socks]
        peak = baseline

        def stalled() -> bool:
            nonlocal peak
            for i, s in enumerate(socks):
                try:
                    sent[i] += s.send(payloads[i][sent[i] : sent[i] + (1 << 20)])
                except BlockingIOError:
                    pass
            peak = max(peak, _rss_bytes(pid))
            stats = server_stats(proc.port)
            # Two blocks fit the budget; the other six wait without being read.
            return (
                stats["pending_waiters"] == str(conns - 2)
                and sum(n == len(p) for n, p in zip(sent, payloads, strict=True)) >= 2
            )

        wait_until(stalled, 60, what="six connections waiting for the budget")
        stats = server_stats(proc.port)
        assert int(stats["pending_bytes"]) <= budget
        growth = (peak - baseline) / 2**20
        print(f"{conns} unfinished {item >> 20} MiB sets: server RSS grew {growth:.0f} MiB")
        assert growth < 40  # without the budget: ~60 MiB (seven of eight blocks buffered)

        # The budget frees as blocks complete: every set is stored in the end. The replies
        # are checked here, not in the threads, where a failed assert would go unseen.
        replies: dict[int, bytes] = {}

        def finish(i: int) -> None:
            s = socks[i]
            s.setblocking(True)
            s.sendall(payloads[i][sent[i] :] + b"b" * (1 << 20) + b"\r\n")
            replies[i] = s.recv(100)

        threads = [threading.Thread(target=finish, args=(i,)) for i in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a set never finished"
        assert replies == {i: b"STORED\r\n" for i in range(conns)}
        assert server_stats(proc.port)["queue_big_items"] == str(conns)
        assert server_stats(proc.port)["pending_bytes"] == "0"
    finally:
        for s in socks:
            s.close()
        assert proc.stop() == 0, proc.log()


def test_other_clients_are_served_while_stats_replies_are_built(tmp_path: Path) -> None:
    proc = start(tmp_path, '[server]\nfsync = "never"\n')
    queues = 5000
    try:
        with Wire(proc.port) as w:
            w.send(b"".join(b"get q%05d\r\n" % i for i in range(queues)))
            for _ in range(queues):
                assert w.reply() == b"END\r\n"
            size = len(w.call(b"stats\r\n"))
        # The greedy client asks for twenty replies and reads none of them until the other
        # client has had its turn. Its receive buffer is pinned small, so what the server can
        # have written meanwhile is bounded by the kernel's buffers, whatever the timing: a
        # server that built all twenty replies in one go would be far past that bound.
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        bound = (queues + 1) * 8 + size + wmem_max + (8 << 20)  # what came before, and slack
        assert 20 * size > 2 * bound, "too few queues for the test to tell"
        greedy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.connect(("127.0.0.1", proc.port))
        greedy.sendall(b"stats\r\n" * 20)
        wait_until(lambda: select.select([greedy], [], [], 0)[0], 60, what="the first stats part")
        # The twenty replies are under way and cannot finish: the other client is answered
        # between two parts of them, not after all of them.
        with Wire(proc.port) as other:
            assert other.call(b"version\r\n") == VERSION
            written = int(other.call(b"stats\r\n").split(b"STAT bytes_written ")[1].split()[0])
        print(
            f"stats reply {size} B; {written} B written before the other client's turn"
            f" (bound {bound})"
        )
        assert written < bound, f"{written} bytes written before the other client's turn"
        # And then all twenty arrive whole.
        greedy.settimeout(60)
        ends, tail = 0, b""
        while ends < 20:
            chunk = greedy.recv(1 << 20)
            assert chunk, "the server hung up before all twenty replies"
            data = tail + chunk
            ends += data.count(b"\r\nEND\r\n")
            tail = data[-6:]  # shorter than the marker, so no marker is counted twice
        greedy.close()
    finally:
        assert proc.stop() == 0, proc.log()


# -- derived queue names ---------------------------------------------------------------------


def test_a_queue_whose_dead_letter_name_is_too_long_is_refused_clearly(tmp_path: Path) -> None:
    proc = start(tmp_path, "[queue_defaults]\nmax_deliveries = 2\n")
    longest = "L" * 128
    try:
        with Wire(proc.port) as w:
            reply = w.call(b"set %s 0 0 1\r\nx\r\n" % longest.encode())
            assert reply.startswith(b"CLIENT_ERROR dead-letter queue <name>_dead"), reply
            assert b"set dead_letter" in reply
            ok = "L" * 123  # `<name>_dead` is exactly 128 bytes
            assert w.call(b"set %s 0 0 1\r\nx\r\n" % ok.encode()) == b"STORED\r\n"
            for _ in range(2):
                assert w.call(b"get %s/open\r\n" % ok.encode()).startswith(b"VALUE ")
                assert w.call(b"get %s/abort\r\n" % ok.encode()) == b"END\r\n"
            # The third delivery dead-letters the item: `<name>_dead` works.
            assert w.call(b"get %s/open\r\n" % ok.encode()) == b"END\r\n"
            assert w.call(
                b"get %s_dead\r\n" % ok.encode()
            ) == b"VALUE %s_dead 0 1\r\nx\r\nEND\r\n" % (ok.encode())
    finally:
        assert proc.stop() == 0, proc.log()


def test_settings_with_a_dead_letter_name_over_the_limit_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(f"[queues.{'p' * 125}]\nmax_deliveries = 3\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kestrelq",
            "serve",
            "--port",
            "0",
            "--config",
            str(conf),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "dead-letter queue <name>_dead of this queue would be 130 bytes" in done.stderr
