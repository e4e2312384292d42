"""The room written ahead with zeros: what a crash leaves of it, and how a reader takes it.

A journal writes zeros ahead of its records (so an `always` fdatasync flushes no inode), so
after a crash its newest segment ends in zeros: a clean end, cut off quietly at start-up. A
record torn by a power cut over those zeros (its first sectors written, the rest still zeros)
is a torn tail, cut off with a warning, as one cut short by the end of the file; a whole
record damaged later, with zeros after it, is still damage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_journal import SEGMENT_1, recovered, store_at, write

from kestrelq.errors import JournalCorrupt
from kestrelq.journal import format as fmt
from kestrelq.journal.item import Item
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.store import JournalStore, StoreLimits

BIG: list[fmt.Record] = [
    fmt.Add(Item(b"%d" % i * 2000, 0, 1, 0, 0)) for i in range(1, 4)
]  # 4 sectors each
ROOM = bytes(8192)


def test_a_crash_leaves_zeros_after_the_last_record_which_are_a_clean_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JournalStore(
        tmp_path, lambda name: FsyncPolicy("always"), StoreLimits(reserve_bytes=0),
        batch_writes=True,
    )  # fmt: skip
    store.open()
    log = store.log_for("q")
    for record in BIG:
        log(record, False)
    store.write_pending()
    store.sync_always()
    journal = tmp_path / SEGMENT_1
    whole = journal.read_bytes()
    records_end = store.journals["q"].size
    assert len(whole) > records_end and not whole[records_end:].strip(b"\0")
    # The process dies here, its file never closed: what the disk holds is `whole`.
    store.close()
    journal.write_bytes(whole)
    with caplog.at_level(logging.INFO):
        assert recovered(tmp_path) == BIG
    assert "torn" not in caplog.text and "LOST" not in caplog.text
    assert journal.stat().st_size == records_end  # the zeros are cut off at the restart
    # Records behind are read through zeros too (a segment a crash left that way).
    journal.write_bytes(whole)
    reader = store_at(tmp_path)
    try:
        assert [r for r, _ in reader.records(journal, 4, repair=False)] == BIG
        reader.journal("q").cursor.verify()
    finally:
        reader.close()


@pytest.mark.parametrize("sectors_kept", [0, 1, 2, 3])
def test_a_record_torn_over_the_zeros_is_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sectors_kept: int
) -> None:
    journal = write(tmp_path, BIG)
    whole = journal.read_bytes()
    last = len(whole) - len(fmt.encode(BIG[-1]))
    # The power went with only the first sectors of the last record on the disk.
    keep = (last // 512 + 1 + sectors_kept) * 512
    assert last < keep < len(whole)
    journal.write_bytes(whole[:keep] + bytes(len(whole) - keep) + ROOM)
    with caplog.at_level(logging.WARNING):
        assert recovered(tmp_path) == BIG[:-1]
    assert "torn tail" in caplog.text
    assert journal.stat().st_size == last


def test_a_whole_record_damaged_before_the_zeros_is_still_damage(tmp_path: Path) -> None:
    journal = write(tmp_path, BIG)
    data = bytearray(journal.read_bytes())
    last = len(data) - len(fmt.encode(BIG[-1]))
    data[last + 100] ^= 0x5A  # a write that reached the disk whole, damaged later
    journal.write_bytes(bytes(data) + ROOM)
    with pytest.raises(JournalCorrupt) as info:
        recovered(tmp_path)
    assert info.value.offset == last and info.value.detail == "checksum mismatch"
    assert recovered(tmp_path, salvage=True) == BIG[:-1]


@pytest.mark.parametrize(
    "left", [bytes(8192), b"KQ" + bytes(8190), b"KQJ"], ids=["zeros", "half-header", "3-bytes"]
)
def test_a_new_segment_whose_header_never_reached_the_disk_is_rewritten_from_its_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, left: bytes
) -> None:
    # A power cut before a new segment's first fsync: its size (the zeros written ahead) was
    # kept and its data was not. The first restart starts the queue empty, as it must; what
    # is written and fsynced after it must survive the next restart, header and all.
    journal = tmp_path / SEGMENT_1
    journal.write_bytes(left)
    with caplog.at_level(logging.ERROR):
        assert recovered(tmp_path) == []
    assert "LOST" in caplog.text
    store = JournalStore(
        tmp_path, lambda name: FsyncPolicy("always"), StoreLimits(reserve_bytes=0),
        batch_writes=True,
    )  # fmt: skip
    store.open()
    assert list(store.recover("q")) == []
    store.log_for("q")(BIG[0], False)
    store.write_pending()
    store.sync_always()
    store.close()
    assert journal.read_bytes().startswith(fmt.MAGIC)
    assert recovered(tmp_path) == BIG[:1]  # no --salvage needed, nothing lost


def test_a_whole_record_ending_in_zeros_damaged_before_the_zeros_is_taken_for_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The limit docs/journal.md names: the reader cannot tell this record, written whole and
    # damaged later, from one torn over the zeros written ahead. It is cut off, and the
    # warning says that it may have been damage rather than a crash.
    journal = write(tmp_path, [fmt.Add(Item(b"x" * 900 + bytes(300), 0, 1, 0, 0))])
    data = bytearray(journal.read_bytes())
    assert not data[1024:].strip(b"\0") and len(data) > 1024  # zeros from a sector boundary
    data[100] ^= 0x5A
    journal.write_bytes(bytes(data) + ROOM)
    with caplog.at_level(logging.WARNING):
        assert recovered(tmp_path) == []
    assert "torn tail" in caplog.text and "damaged on the disk" in caplog.text
