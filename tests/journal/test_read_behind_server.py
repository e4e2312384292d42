"""Read-behind and segments on a real server: bounded memory, restarts, damage, disk use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, journal_bytes, server_stats, serving, wait_until

from kestrelq.journal.store import StoreLimits

# 200 items of 1000 bytes against a 20 KB memory window and 40 KB segments: most items are
# behind, and several segments exist at once.
CONFIG = """
[server]
segment_bytes = 40000
disk_reserve_bytes = 0
[queue_defaults]
max_memory_bytes = 20000
"""
COUNT = 200


def payload(i: int) -> bytes:
    return b"%06d" % i + b"." * 994


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerProcess]:
    with serving(tmp_path / "data", "--fsync", "never", config=CONFIG, start=False) as proc:
        yield proc


def fill(port: int) -> None:
    with Wire(port) as w:
        for i in range(COUNT):
            assert w.call(b"set q 0 0 1000\r\n" + payload(i) + b"\r\n") == b"STORED\r\n"


def segments(srv: ServerProcess) -> int:
    return len(list(srv.data_dir.glob("q.*.kqj")))


def fill_and_kill(srv: ServerProcess) -> None:
    srv.start()
    fill(srv.port)
    stats = server_stats(srv.port)
    assert stats["queue_q_items"] == str(COUNT)
    assert int(stats["queue_q_mem_bytes"]) <= 20000 + 1000
    # The housekeeping tick starts new segments; the old ones stay: items behind live there.
    wait_until(lambda: segments(srv) >= 2, 60, what="a second segment")
    srv.kill()
    srv.start()


def reliable_get(w: Wire) -> int:
    reply = w.call(b"get q/close/open\r\n")
    assert reply.startswith(b"VALUE q/close/open 0 1000\r\n"), reply[:60]
    return int(reply.split(b"\r\n")[1][:6])


def drained_to_one_segment(srv: ServerProcess) -> None:
    """Drained and idle: the old segments, kept while items behind were in them, are gone.

    What is left is one segment, as small as the last segment switch left it: a switch while
    items remained copies them into its checkpoint, and an empty queue's segment is rewritten
    only past `idle_compact_bytes` (so a queue that keeps going empty is not rewritten on
    every tick). Only a switch after the drain leaves a bare checkpoint, and when the
    housekeeping tick switches is not the test's to choose.
    """
    limit = StoreLimits().idle_compact_bytes
    wait_until(
        lambda: segments(srv) == 1 and journal_bytes(srv.data_dir) <= limit, 60,
        what=f"one segment of at most {limit} bytes",
    )  # fmt: skip


def test_backlog_beyond_memory_survives_kill_and_drains_in_order(srv: ServerProcess) -> None:
    fill_and_kill(srv)
    got = []
    with Wire(srv.port) as w:
        for _ in range(COUNT):
            got.append(reliable_get(w))
            if len(got) == COUNT // 2:
                srv_stats = server_stats(srv.port)
                assert int(srv_stats["queue_q_mem_bytes"]) <= 20000 + 1000
        assert w.call(b"get q/close\r\n") == b"END\r\n"
        assert w.call(b"get q\r\n") == b"END\r\n"
    assert got == list(range(COUNT))
    drained_to_one_segment(srv)
    assert srv.stop() == 0


def test_a_segment_switch_while_items_remain_keeps_them_after_a_kill(
    srv: ServerProcess,
) -> None:
    fill_and_kill(srv)
    got = []
    with Wire(srv.port) as w:
        got += [reliable_get(w) for _ in range(COUNT - 5)]
        # The last items are all in memory now (the window holds about 20), so nothing is
        # behind and the tick switches to one segment, its checkpoint holding these 5.
        wait_until(lambda: segments(srv) == 1, 60, what="the switch to one segment")
        got.append(reliable_get(w))
    srv.kill()  # the last read is still open: it goes back to the head
    srv.start()
    with Wire(srv.port) as w:
        got[-1:] = [reliable_get(w) for _ in range(5)]
        assert w.call(b"get q/close\r\n") == b"END\r\n"
        assert w.call(b"get q\r\n") == b"END\r\n"
    assert got == list(range(COUNT))
    drained_to_one_segment(srv)
    assert srv.stop() == 0


def test_restart_midway_keeps_order_across_the_memory_window(srv: ServerProcess) -> None:
    srv.start()
    fill(srv.port)
    with Wire(srv.port) as w:
        for i in range(70):
            assert w.call(b"get q\r\n").split(b"\r\n")[1][:6] == b"%06d" % i
    assert srv.stop() == 0
    srv.start()
    with Wire(srv.port) as w:
        rest = [int(w.call(b"get q\r\n").split(b"\r\n")[1][:6]) for _ in range(COUNT - 70)]
    assert rest == list(range(70, COUNT))


def test_damage_in_a_segment_read_behind_stops_the_start(srv: ServerProcess) -> None:
    srv.start()
    fill(srv.port)
    wait_until(lambda: len(list(srv.data_dir.glob("q.*.kqj"))) >= 2, 60, what="a second segment")
    assert srv.stop() == 0
    # The segment before the newest (which starts with the checkpoint) ends with ADD records
    # of items behind: damage the data of its last one.
    behind = sorted(srv.data_dir.glob("q.*.kqj"))[-2]
    data = bytearray(behind.read_bytes())
    data[len(data) - 500] ^= 0xFF
    behind.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"damaged journal record at offset \d+"):
        srv.start()
    assert str(behind) in srv.log()
    srv.start("--salvage")  # skips what it cannot read, serves the rest
    with Wire(srv.port) as w:
        assert w.call(b"get q\r\n").startswith(b"VALUE q 0 1000")
    assert os.path.exists(srv.data_dir / ".lock")
    assert srv.stop() == 0
