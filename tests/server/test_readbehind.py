"""Queue features on queues that outgrow their memory window (items read back from the journal).

With `max_memory_bytes = 1024` and 100-byte items, only ~10 items of a 100-item queue are in
memory; the rest are read behind from journal segments (`segment_bytes = 2048`, so several).
Every queue feature must behave exactly as it does for a queue held in memory, also across a
kill -9.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, drain, put_all, server_stats, serving, wait_until

ITEMS = [b"i%03d-" % i + b"z" * 95 for i in range(100)]

CONFIG = """
[server]
segment_bytes = 2048

[queue_defaults]
max_memory_bytes = 1024

[queues.delay]
max_age_ms = 300
expire_to = "ready"

[queues.ring]
max_items = 50
discard_old_when_full = true
"""


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerProcess]:
    with serving(tmp_path / "data", config=CONFIG) as proc:
        yield proc


def test_most_items_are_read_behind_and_come_back_in_order(srv: ServerProcess) -> None:
    put_all(srv.port, "q", ITEMS)
    stats = server_stats(srv.port)
    assert stats["queue_q_items"] == "100"
    assert int(stats["queue_q_mem_items"]) <= 15
    assert len(list(srv.data_dir.glob("q.*.kqj"))) >= 1
    assert drain(srv.port, "q") == ITEMS


def test_expire_to_moves_items_read_behind(srv: ServerProcess) -> None:
    put_all(srv.port, "delay", ITEMS)
    wait_until(lambda: server_stats(srv.port).get("queue_ready_items") == "100", 60)
    assert drain(srv.port, "ready") == ITEMS
    assert drain(srv.port, "delay") == []


def test_discard_old_when_full_with_items_behind(srv: ServerProcess) -> None:
    put_all(srv.port, "ring", ITEMS)
    assert drain(srv.port, "ring") == ITEMS[50:]
    assert server_stats(srv.port)["queue_ring_discarded"] == "50"


def test_flush_drops_items_behind_for_good(srv: ServerProcess) -> None:
    put_all(srv.port, "fl", ITEMS)
    with Wire(srv.port) as w:
        assert w.call(b"flush fl\r\n") == b"END\r\n"
    assert drain(srv.port, "fl") == []
    put_all(srv.port, "fl", ITEMS[:3])
    srv.kill()
    srv.start()
    assert drain(srv.port, "fl") == ITEMS[:3]


def test_fanout_child_reads_behind_too(srv: ServerProcess) -> None:
    with Wire(srv.port) as w:
        assert w.call(b"get fan+c\r\n") == b"END\r\n"
    put_all(srv.port, "fan", ITEMS)
    srv.kill()
    srv.start()
    assert drain(srv.port, "fan") == ITEMS
    assert drain(srv.port, "fan+c") == ITEMS


def test_delete_removes_every_segment(srv: ServerProcess) -> None:
    put_all(srv.port, "del", ITEMS)
    with Wire(srv.port) as w:
        assert w.call(b"delete del\r\n") == b"DELETED\r\n"
    assert list(srv.data_dir.glob("del.*")) == []
    srv.kill()
    srv.start()
    assert drain(srv.port, "del") == []


def test_partly_consumed_with_an_open_read_then_kill_9(srv: ServerProcess) -> None:
    put_all(srv.port, "pc", ITEMS)
    holder = Wire(srv.port)
    assert holder.call(b"get pc/open\r\n").startswith(b"VALUE pc/open 0 100\r\n" + ITEMS[0])
    with Wire(srv.port) as w:
        for i in range(1, 40):
            assert w.call(b"get pc\r\n") == b"VALUE pc 0 100\r\n" + ITEMS[i] + b"\r\nEND\r\n"
    srv.kill()
    holder.close()
    srv.start()
    # The open read is back at the head; the 39 plain gets stay done.
    assert drain(srv.port, "pc") == [ITEMS[0], *ITEMS[40:]]
