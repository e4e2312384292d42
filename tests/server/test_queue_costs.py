"""What a queue costs a real server: files, descriptors and disk go only to queues being
written, and the number of queues is bounded.

What must hold: a get on a queue that does not exist makes no file and takes no descriptor; a
queue written once holds a few KiB of disk, not a megabyte reserved ahead, and an idle queue's
file is closed and its room given back; past `max_queues` a new queue is refused with a clear
error while the existing ones go on; and a server with thousands of journals restarts (and can
write to all of them) under `ulimit -n 1024`.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, drain, segments, small_tmpfs, wait_until

from kestrelq.server.config import load


def open_fds(srv: ServerProcess) -> int:
    assert srv.proc is not None
    return len(os.listdir(f"/proc/{srv.proc.pid}/fd"))


def journal_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("*.kqj"))


def pipeline(w: Wire, payload: bytes, replies: int) -> list[bytes]:
    """Send many commands at once; their `replies` one-line replies."""
    w.send(payload)
    got = []
    for _ in range(replies):
        got.append(w.line())
    return got


def test_a_get_on_a_queue_that_does_not_exist_costs_no_file_and_no_descriptor(
    server: ServerProcess,
) -> None:
    with Wire(server.port) as w:
        assert w.call(b"version\r\n").startswith(b"VERSION")
        before = open_fds(server)
        replies = pipeline(w, b"".join(b"get g%d\r\n" % i for i in range(2000)), 2000)
        assert set(replies) == {b"END\r\n"}
        assert w.call(b"get g1/t=1\r\n") == b"END\r\n"  # a blocking get too
        assert open_fds(server) == before
    assert journal_files(server.data_dir) == []


def test_queues_written_once_hold_little_disk_and_no_descriptor_once_idle(
    server: ServerProcess,
) -> None:
    queues = 200
    with Wire(server.port) as w:
        assert w.call(b"version\r\n").startswith(b"VERSION")
        baseline = open_fds(server)
        sets = b"".join(b"set q%d 0 0 1\r\nx\r\n" % i for i in range(queues))
        assert set(pipeline(w, sets, queues)) == {b"STORED\r\n"}
        files = journal_files(server.data_dir)
        assert len(files) == queues
        # (It was a megabyte reserved ahead per queue, kept for ever.)
        held = sum(p.stat().st_blocks * 512 for p in files)
        assert held < queues * (32 << 10), f"{held} bytes of disk for {queues} one-byte items"
        # Idle queues close their files.
        wait_until(lambda: open_fds(server) <= baseline, 60, what="idle journal files closed")
        assert [w.call(b"get q%d\r\n" % i) for i in (0, queues - 1)] == [
            b"VALUE q0 0 1\r\nx\r\nEND\r\n",
            b"VALUE q%d 0 1\r\nx\r\nEND\r\n" % (queues - 1),
        ]


def test_max_queues_refuses_new_queues_clearly_and_serves_the_others(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", "--max-queues", "3").start()
    with Wire(srv.port) as w:
        for name in (b"a", b"b", b"c"):
            assert w.call(b"set %s 0 0 1\r\nx\r\n" % name) == b"STORED\r\n"
        refusal = w.call(b"set d 0 0 1\r\nx\r\n")
        assert refusal.startswith(b"SERVER_ERROR too many queues"), refusal
        assert b"max_queues (3)" in refusal
        assert w.call(b"get e\r\n").startswith(b"SERVER_ERROR too many queues")
        # Nothing was lost and the connection is still in step.
        assert w.call(b"get a\r\n") == b"VALUE a 0 1\r\nx\r\nEND\r\n"
    assert segments(srv.data_dir, "d") == []
    assert srv.stop() == 0
    # A restart with a lower limit still serves every queue already on disk.
    srv.args = ["--max-queues", "1"]
    srv.start()
    assert drain(srv.port, "b") == [b"x"] and drain(srv.port, "c") == [b"x"]
    assert srv.stop() == 0


def test_max_queues_comes_from_the_file_the_environment_and_the_command_line(
    tmp_path: Path,
) -> None:
    assert load({}, {}).max_queues == 10_000
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[server]\nmax_queues = 50\n")
    assert load({"config_file": str(conf)}, {}).max_queues == 50
    env = {"KESTRELQ_MAX_QUEUES": "60"}
    assert load({"config_file": str(conf)}, env).max_queues == 60
    assert load({"config_file": str(conf), "max_queues": 70}, env).max_queues == 70


@contextmanager
def descriptor_limit(soft: int) -> Iterator[None]:
    """Processes started inside get `ulimit -n soft` (children inherit the limit)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


@pytest.mark.timeout(600)
def test_thousands_of_queues_restart_and_take_writes_under_ulimit_1024(tmp_path: Path) -> None:
    queues = 5000
    # On a tmpfs, where an fsync costs nothing: 5000 new files cost 5000 fsyncs on a disk, and
    # what is tested here is descriptors, not the disk's speed.
    with small_tmpfs(tmp_path / "disk", "256m") as disk:
        srv = ServerProcess(disk / "data", "--max-queues", "0")
        srv.log_path = tmp_path / "server.log"
        srv.start()
        with Wire(srv.port, timeout_s=120) as w:
            sets = b"".join(b"set q%d 0 0 1\r\na\r\n" % i for i in range(queues))
            assert set(pipeline(w, sets, queues)) == {b"STORED\r\n"}
        assert srv.stop() == 0
        assert len(journal_files(srv.data_dir)) == queues

        with descriptor_limit(1024):
            srv.start()
        assert open_fds(srv) < 100
        with Wire(srv.port, timeout_s=120) as w:
            # One more item on every queue, in one pipelined burst: more journals written at
            # once than there are descriptors.
            sets = b"".join(b"set q%d 0 0 1\r\nb\r\n" % i for i in range(queues))
            assert set(pipeline(w, sets, queues)) == {b"STORED\r\n"}
        assert srv.stop() == 0
        with descriptor_limit(1024):
            srv.start()
        for i in (0, 1234, queues - 1):
            assert drain(srv.port, f"q{i}") == [b"a", b"b"]
        assert srv.stop() == 0
    assert "Traceback" not in srv.log()


def test_a_flood_of_queues_leaves_descriptors_for_every_allowed_connection(
    tmp_path: Path,
) -> None:
    # 2,000 queues written in one burst under `ulimit -n 1024`: without a cap on open journal
    # files the server runs out of descriptors in the middle of the burst, and until idle files
    # are closed accept() fails for every newcomer.
    max_connections = 200
    with small_tmpfs(tmp_path / "disk", "64m") as disk:
        srv = ServerProcess(
            disk / "data", "--max-queues", "0", "--max-connections", str(max_connections)
        )
        srv.log_path = tmp_path / "server.log"
        with descriptor_limit(1024):
            srv.start()
        with Wire(srv.port, timeout_s=120) as w:
            sets = b"".join(b"set f%d 0 0 1\r\nx\r\n" % i for i in range(2000))
            assert set(pipeline(w, sets, 2000)) == {b"STORED\r\n"}
            assert open_fds(srv) < 1024 - max_connections
            others = [Wire(srv.port) for _ in range(max_connections - 1)]
            try:
                for other in others:
                    assert other.call(b"version\r\n").startswith(b"VERSION")
            finally:
                for other in others:
                    other.close()
        assert drain(srv.port, "f1999") == [b"x"]
        assert srv.stop() == 0
    assert "out of file descriptors" not in srv.log()
