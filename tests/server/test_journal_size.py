"""The journals' total size on disk stays bounded while items flow through (issue 2).

Kestrel compacted by looking at one file and let old ones pile up; here the whole data
directory is measured, with and without items left in the queue between rounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, server_stats, wait_until

SEGMENT_BYTES = 16 << 10
ROUNDS = 16
ITEM = b"j" * 200
ROUND_BYTES = 100 * (len(ITEM) + 40) + 200 * 20  # the records one round appends, roughly


def journal_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("*.kqj*"))


@pytest.mark.parametrize("backlog", [0, 50], ids=["drained", "backlog-50"])
def test_total_journal_size_stays_bounded(tmp_path: Path, backlog: int) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(
        # fsync does not change what is on disk, only how fast this test runs.
        f'[server]\nfsync = "never"\nsegment_bytes = {SEGMENT_BYTES}\n'
        "[queue_defaults]\nmax_memory_bytes = 4096\n"
    )
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    set_item = b"set q 0 0 %d\r\n%s\r\n" % (len(ITEM), ITEM)
    backlog_bytes = backlog * (len(ITEM) + 64)
    # Segments are rotated by the server's periodic housekeeping, so how far a segment grows
    # before it is rotated depends on the write rate. Pace the rounds by rotations (one
    # round, then wait for the next rotation): after each, the total must be a couple of
    # rounds' worth, however many rounds went through before.
    bound = 3 * ROUND_BYTES + backlog_bytes
    sizes = []
    try:
        with Wire(srv.port) as w:
            for _ in range(backlog):
                assert w.call(set_item) == b"STORED\r\n"
            for _round in range(ROUNDS):
                rotations = int(server_stats(srv.port).get("queue_q_journal_rotations", "0"))
                for _ in range(100):
                    assert w.call(set_item) == b"STORED\r\n"
                for _ in range(100):
                    assert w.call(b"get q/open\r\n").startswith(b"VALUE ")
                    assert w.call(b"get q/close\r\n") == b"END\r\n"

                def rotated(before: int = rotations) -> bool:
                    now = int(server_stats(srv.port)["queue_q_journal_rotations"])
                    return now > before

                wait_until(rotated, 10, what="a journal rotation")
                sizes.append(journal_bytes(srv.data_dir))
        stats = server_stats(srv.port)
        assert stats["queue_q_items"] == str(backlog)
        print(f"backlog {backlog}: {ROUNDS * ROUND_BYTES} B appended, sizes after rounds {sizes}")
        assert max(sizes) <= bound, sizes
        assert int(stats["journal_bytes"]) <= bound
        # Idle, the journal shrinks to little more than the items still queued.
        idle_bound = (64 << 10) + backlog_bytes
        wait_until(lambda: journal_bytes(srv.data_dir) <= idle_bound, 10, what="idle compaction")
    finally:
        assert srv.stop() == 0, srv.log()
    # Nothing was lost to the rotations.
    srv.start()
    try:
        with Wire(srv.port) as w:
            for _ in range(backlog):
                assert w.call(b"get q\r\n") == b"VALUE q 0 200\r\n" + ITEM + b"\r\nEND\r\n"
            assert w.call(b"get q\r\n") == b"END\r\n"
    finally:
        assert srv.stop() == 0
