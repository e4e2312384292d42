"""The journals' total size on disk stays bounded while items flow through.

Kestrel compacted by looking at one file and let old ones pile up; here the whole data
directory is measured, with and without items left in the queue between rounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, journal_bytes, server_stats, wait_until

SEGMENT_BYTES = 16 << 10
ROUNDS = 60
ITEM = b"j" * 200
ROUND_BYTES = 100 * (len(ITEM) + 40) + 200 * 20  # the records one round appends, roughly


@pytest.mark.parametrize("backlog", [0, 50], ids=["drained", "backlog-50"])
def test_total_journal_size_stays_bounded(tmp_path: Path, backlog: int) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(
        # fsync does not change what is on disk, only how fast this test writes.
        f'[server]\nfsync = "never"\nsegment_bytes = {SEGMENT_BYTES}\n'
        "[queue_defaults]\nmax_memory_bytes = 4096\n"
    )
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    set_item = b"set q 0 0 %d\r\n%s\r\n" % (len(ITEM), ITEM)
    backlog_bytes = backlog * (len(ITEM) + 64)
    # Rounds back to back, as fast as one client goes: a segment is switched as soon as it
    # fills, and the ones nothing needs are dropped, so the total stays a few segments (plus
    # what is still queued), however much went through.
    bound = 6 * SEGMENT_BYTES + backlog_bytes
    sizes = []
    try:
        with Wire(srv.port) as w:
            for _ in range(backlog):
                assert w.call(set_item) == b"STORED\r\n"
            for _round in range(ROUNDS):
                for _ in range(100):
                    assert w.call(set_item) == b"STORED\r\n"
                for _ in range(100):
                    assert w.call(b"get q/open\r\n").startswith(b"VALUE ")
                    assert w.call(b"get q/close\r\n") == b"END\r\n"
                sizes.append(journal_bytes(srv.data_dir))
        stats = server_stats(srv.port)
        assert stats["queue_q_items"] == str(backlog)
        print(f"backlog {backlog}: {ROUNDS * ROUND_BYTES} B appended, sizes {sizes[::6]}")
        assert max(sizes) <= bound, sizes
        assert int(stats["journal_bytes"]) <= bound
        assert int(stats["queue_q_journal_rotations"]) >= ROUNDS * ROUND_BYTES // SEGMENT_BYTES // 2
        # Idle, the journal shrinks to little more than the items still queued.
        idle_bound = (64 << 10) + backlog_bytes
        wait_until(lambda: journal_bytes(srv.data_dir) <= idle_bound, 60, what="idle compaction")
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
