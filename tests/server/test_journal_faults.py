"""Disk and journal faults met by a real server: a full disk with a crash, journals cut or
damaged where a torn write cannot explain it, what salvage says it drops, the lock file.

What must hold: a crash on a full disk never leaves a journal that stops the restart, and the
restart needs no room beyond the reserve, so consumers can drain; a journal that cannot be read
to its end is reported by name with what is lost, never started silently as empty; a whole
record that fails its checksum is corruption (the start is refused, naming file and offset),
not a torn tail; and the refusal says exactly what --salvage will drop.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    ServerProcess,
    Wire,
    drain,
    fill_disk,
    record_spans,
    request,
    segments,
    small_tmpfs,
    wait_until,
)

ITEMS = [b"item%03d-" % i + b"x" * (i % 7) for i in range(20)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small-disk") as mount_point:
        yield mount_point


def reliable_drain(port: int, queue: str, limit: int) -> list[bytes]:
    """Reliable reads (each one journals an open and a confirm) until END."""
    got: list[bytes] = []
    with Wire(port) as w:
        for _ in range(limit):
            reply = w.call(b"get %s/close/open\r\n" % queue.encode())
            if reply == b"END\r\n":
                return got
            assert reply.startswith(b"VALUE "), reply
            got.append(reply.split(b"\r\n")[1])
    raise AssertionError(f"{queue} did not drain in {limit} reads")


def test_a_get_on_a_new_queue_of_a_full_disk_then_kill_9_restarts_and_drains(
    tmp_path: Path, small_disk: Path
) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text('[server]\nfsync = "always"\ndisk_reserve_bytes = 262144\n')
    srv = ServerProcess(small_disk / "data", "--config", str(conf))
    srv.log_path = tmp_path / "server.log"  # the log must not live on the full disk
    srv.start()
    stored: list[bytes] = []
    with Wire(srv.port) as w:
        fill_disk(w, stored, [])
        assert os.statvfs(small_disk).f_bavail == 0 and len(stored) >= 100
        # Reading a queue that does not exist needs no room and makes no file.
        assert w.call(b"get newq\r\n") == b"END\r\n"
        assert w.call(b"get newq/t=10\r\n") == b"END\r\n"
    assert segments(srv.data_dir, "newq") == []
    srv.kill()
    # What a crash between creating a journal and its first write leaves: an empty file.
    (srv.data_dir / "other.0000000001.kqj").touch()
    srv.start()  # on a disk that is still full
    log = srv.log()
    assert "other.0000000001.kqj" in log and "ERROR" in log, log[-3000:]
    # Consumers drain it with reliable reads: every open and confirm is journalled.
    assert reliable_drain(srv.port, "full", len(stored) + 1) == stored
    assert srv.stop() == 0
    assert "Traceback" not in srv.log()


def stored_journal(tmp_path: Path) -> tuple[ServerProcess, Path, bytes]:
    """A stopped server whose queue `t` holds ITEMS; (server, journal file, its bytes)."""
    srv = ServerProcess(tmp_path / "data", "--fsync", "always").start()
    with Wire(srv.port) as w:
        for data in ITEMS:
            assert w.call(b"set t 0 0 %d\r\n%s\r\n" % (len(data), data)) == b"STORED\r\n"
    assert srv.stop() == 0
    (path,) = segments(srv.data_dir, "t")
    return srv, path, path.read_bytes()


def refused(srv: ServerProcess, *args: str) -> str:
    """Start, expect the server to refuse (exit != 0); its log."""
    srv.start(*args, wait=False)
    proc = srv.proc
    assert proc is not None

    def listening() -> bool:
        try:
            return request(srv.port, b"version\r\n", timeout_s=1).startswith(b"VERSION")
        except OSError:
            return False

    wait_until(lambda: proc.poll() is not None or listening(), 30, what="exit or start")
    log = srv.log()
    assert proc.poll() is not None, "the server started on a damaged journal:\n" + log[-3000:]
    assert proc.returncode != 0
    return log


def test_a_journal_cut_inside_its_header_is_reported_by_name(tmp_path: Path) -> None:
    srv, path, original = stored_journal(tmp_path)
    path.write_bytes(original[:2])
    srv.start()
    log = srv.log()
    error_lines = [line for line in log.splitlines() if " ERROR " in line or "CRITICAL" in line]
    assert any(str(path) in line and "LOST" in line for line in error_lines), log[-3000:]
    assert drain(srv.port, "t") == []
    # The file is usable again: what is written now survives a restart.
    with Wire(srv.port) as w:
        assert w.call(b"set t 0 0 5\r\nafter\r\n") == b"STORED\r\n"
    assert srv.stop() == 0
    srv.start()
    assert drain(srv.port, "t") == [b"after"]
    assert srv.stop() == 0


def test_a_damaged_file_header_refuses_the_start_and_salvage_keeps_the_records(
    tmp_path: Path,
) -> None:
    srv, path, original = stored_journal(tmp_path)
    path.write_bytes(b"\xde\xad\xbe\xef" + original[4:])
    log = refused(srv)
    assert f"{path}: damaged journal record at offset 0" in log, log[-3000:]
    assert "damaged file header" in log
    assert "--salvage to drop the 4 bytes from offset 0 to 4" in log

    srv.start("--salvage")
    assert drain(srv.port, "t") == ITEMS
    assert "salvage drops the 4 bytes from offset 0 to 4" in srv.log()
    assert srv.stop() == 0
    srv.start()  # salvage wrote a fresh segment: a normal start works
    assert drain(srv.port, "t") == []
    assert srv.stop() == 0


def test_a_whole_last_record_with_a_bad_checksum_is_corruption_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    srv, path, original = stored_journal(tmp_path)
    start, end = record_spans(original)[-1]
    damaged = bytearray(original)
    damaged[end - 2] ^= 0x5A  # inside the last item's data; the record is whole
    path.write_bytes(bytes(damaged))
    log = refused(srv)
    assert f"{path}: damaged journal record at offset {start}: checksum mismatch" in log
    assert "torn tail" not in log
    assert f"drop the {end - start} bytes from offset {start} to the end of the file" in log
    assert path.read_bytes() == bytes(damaged), "a refused start must not change the journal"

    srv.start("--salvage")
    assert drain(srv.port, "t") == ITEMS[:-1]
    assert srv.stop() == 0


def test_the_salvage_message_says_exactly_what_it_drops(tmp_path: Path) -> None:
    srv, path, original = stored_journal(tmp_path)
    spans = record_spans(original)
    index = len(spans) // 2
    start, end = spans[index]
    damaged = bytearray(original)
    damaged[(start + end) // 2] ^= 0x5A
    path.write_bytes(bytes(damaged))
    what = f"the {end - start} bytes from offset {start} to {end}, where the next whole record"
    log = refused(srv)
    assert f"start with --salvage to drop {what}" in log, log[-3000:]
    assert "everything from that offset on" not in log

    srv.start("--salvage")
    assert f"salvage drops {what}" in srv.log()
    # ... and that is all it dropped: one record, the others are served.
    assert drain(srv.port, "t") == ITEMS[:index] + ITEMS[index + 1 :]
    assert srv.stop() == 0


def test_the_lock_file_is_not_executable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = ServerProcess(data).start()
    assert stat.S_IMODE((data / ".lock").stat().st_mode) in (0o644, 0o600)
    assert srv.stop() == 0
    # One left executable by an older server is put right.
    (data / ".lock").chmod(0o755)
    srv.start()
    assert stat.S_IMODE((data / ".lock").stat().st_mode) in (0o644, 0o600)
    assert srv.stop() == 0
