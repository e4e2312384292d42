"""Journal format and files: round trips, torn tails, damage, salvage, disk full, compaction."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_files import FilesWith

from kestrelq.errors import JournalCorrupt, JournalFull
from kestrelq.journal import format as fmt
from kestrelq.journal import writer
from kestrelq.journal.item import Item
from kestrelq.journal.ledger import Durations
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.store import JournalStore, StoreLimits

SEGMENT_1 = "q.0000000001.kqj"

RECORDS: list[fmt.Record] = [
    fmt.Add(Item(b"hello", 7, 1000, 2000, 0)),
    fmt.Add(Item(b"", 0, 1, 0, 3)),
    fmt.Add(Item(b"\x00\xff" * 100, 2**32 - 1, 2**40, 0, 1)),
    fmt.REMOVE,
    fmt.Open(1),
    fmt.Open(2**63),
    fmt.Confirm(5),
    fmt.Unremove(6),
    fmt.FLUSH,
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip(record: fmt.Record) -> None:
    data = fmt.encode(record)
    assert fmt.decode(data, 0, 1 << 20) == (record, len(data))
    # Every proper prefix is "need more bytes", never a wrong record.
    for cut in range(len(data)):
        assert fmt.decode(data[:cut], 0, 1 << 20) is None


@pytest.mark.parametrize("position", range(fmt.HEADER.size, 30))
def test_any_flipped_byte_is_detected(position: int) -> None:
    data = bytearray(fmt.encode(fmt.Add(Item(b"payload-bytes", 1, 2, 3, 0))))
    data[position] ^= 0x40
    with pytest.raises(JournalCorrupt):
        fmt.decode(bytes(data), 0, 1 << 20)


def store_at(path: Path, **kw: Any) -> JournalStore:
    store = JournalStore(
        path, lambda name: FsyncPolicy("never"), StoreLimits(reserve_bytes=0), **kw
    )
    store.open()
    return store


def write(path: Path, records: list[fmt.Record]) -> Path:
    store = store_at(path)
    log = store.log_for("q")
    for record in records:
        log(record, False)
    store.close()
    return path / SEGMENT_1


def recovered(path: Path, **kw: object) -> list[fmt.Record]:
    store = store_at(path, **kw)
    try:
        return list(store.recover("q"))
    finally:
        store.close()


def test_write_then_recover(tmp_path: Path) -> None:
    write(tmp_path, RECORDS)
    assert recovered(tmp_path) == RECORDS


def test_torn_tail_at_every_offset_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = write(tmp_path, RECORDS[:3])
    whole = journal.read_bytes()
    last_start = len(whole) - len(fmt.encode(RECORDS[2]))
    for cut in range(last_start, len(whole)):
        journal.write_bytes(whole[:cut])
        with caplog.at_level(logging.WARNING):
            assert recovered(tmp_path) == RECORDS[:2]
        assert journal.stat().st_size == last_start  # the torn bytes are gone
    assert "torn tail" in caplog.text


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    journal = write(tmp_path, RECORDS[:2])
    with open(journal, "ab") as f:
        f.write(b"\0" * 4096)
    assert recovered(tmp_path) == RECORDS[:2]


def test_damage_mid_file_refuses_with_file_and_offset(tmp_path: Path) -> None:
    journal = write(tmp_path, RECORDS)
    data = bytearray(journal.read_bytes())
    offset = len(fmt.MAGIC) + len(fmt.encode(RECORDS[0]))
    data[offset + 12] ^= 0xFF  # inside the second record's payload
    journal.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        recovered(tmp_path)
    assert info.value.offset == offset
    assert str(journal) in str(info.value)
    assert "--salvage" in str(info.value)


def test_salvage_skips_the_damaged_record(tmp_path: Path) -> None:
    journal = write(tmp_path, RECORDS)
    data = bytearray(journal.read_bytes())
    offset = len(fmt.MAGIC) + len(fmt.encode(RECORDS[0]))
    data[offset + 12] ^= 0xFF
    journal.write_bytes(bytes(data))
    assert recovered(tmp_path, salvage=True) == [RECORDS[0], *RECORDS[2:]]


def test_not_a_journal(tmp_path: Path) -> None:
    (tmp_path / SEGMENT_1).write_bytes(b"something else entirely")
    with pytest.raises(JournalCorrupt, match="not a kestrelq journal"):
        recovered(tmp_path)


def test_write_failure_leaves_no_partial_record(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky_write(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            os.write(fd, b"".join(parts)[:3])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.writev(fd, parts)

    store = store_at(tmp_path, files=FilesWith(writev=flaky_write))
    log = store.log_for("q")
    log(RECORDS[0], False)  # call 1, with the file's magic header
    with pytest.raises(JournalFull):
        log(RECORDS[1], False)  # call 2 fails after 3 bytes
    log(RECORDS[2], False)
    store.close()
    assert recovered(tmp_path) == [RECORDS[0], RECORDS[2]]


def test_disk_full_releases_reserve_for_reads_only(tmp_path: Path) -> None:
    full = {"on": False}

    def write_fn(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        # Only the reserve is left on the "disk": writes fail until it is freed.
        if full["on"] and (tmp_path / ".reserve").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.writev(fd, parts)

    store = JournalStore(
        tmp_path,
        lambda n: FsyncPolicy("always"),
        StoreLimits(reserve_bytes=4096),
        files=FilesWith(writev=write_fn),
    )
    store.open()
    assert (tmp_path / ".reserve").stat().st_size == 4096
    log = store.log_for("q")
    log(RECORDS[0], False)
    full["on"] = True  # from now on writes fail while the reserve exists
    with pytest.raises(JournalFull):
        log(RECORDS[0], False)
    assert not store.reserve_released
    log(fmt.REMOVE, True)  # a read: frees the reserve, then succeeds
    assert store.reserve_released and not (tmp_path / ".reserve").exists()
    with pytest.raises(JournalFull, match="new items refused"):
        log(RECORDS[0], False)
    full["on"] = False  # consumers drained; space came back
    assert store.ensure_reserve()
    log(RECORDS[0], False)
    store.close()
    assert recovered(tmp_path) == [RECORDS[0], fmt.REMOVE, RECORDS[0]]


def test_rotation_starts_a_segment_with_a_checkpoint_and_drops_old_ones(tmp_path: Path) -> None:
    limits = StoreLimits(reserve_bytes=0, segment_bytes=1024)
    store = JournalStore(tmp_path, lambda n: FsyncPolicy("never"), limits)
    store.open()
    log = store.log_for("q")
    for _ in range(20):
        log(fmt.Add(Item(b"x" * 100)), False)
        log(fmt.REMOVE, False)
    journal = store.journals["q"]
    assert journal.should_rotate(empty=True, behind=False)
    snapshot: list[fmt.Record] = [fmt.CHECKPOINT, fmt.SnapAdd(Item(b"live"))]
    assert journal.rotate(snapshot, behind=False)
    assert journal.segments == [2]
    assert sorted(p.name for p in tmp_path.glob("*.kqj")) == ["q.0000000002.kqj"]
    log(fmt.Add(Item(b"after")), False)
    assert not journal.should_rotate(empty=False, behind=False)
    store.close()
    store = store_at(tmp_path)
    assert list(store.recover("q")) == [*snapshot, fmt.Add(Item(b"after"))]
    store.close()
    assert not list(tmp_path.glob("*.tmp"))


def test_segments_stay_while_items_behind_point_into_them(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    log = store.log_for("q")
    journal = store.journals["q"]
    log(fmt.Add(Item(b"first")), False)
    log(fmt.Add(Item(b"behind-1")), False)
    journal.mark()  # the item just logged is the first one behind
    log(fmt.Add(Item(b"behind-2")), False)
    position = journal.position()
    checkpoint: list[fmt.Record] = [
        fmt.CHECKPOINT,
        fmt.SnapAdd(Item(b"first")),
        fmt.Behind(*position, 2, 16),
    ]
    assert journal.rotate(checkpoint, behind=True)
    assert journal.segments == [1, 2]  # segment 1 still holds the items behind
    log(fmt.Add(Item(b"behind-3")), False)
    assert [i.data for i in journal.read(2, 1 << 20)] == [b"behind-1", b"behind-2"]
    assert [i.data for i in journal.read(1, 1 << 20)] == [b"behind-3"]  # across segments
    assert journal.should_rotate(empty=False, behind=False)  # nothing behind any more
    assert journal.rotate([fmt.CHECKPOINT], behind=False)
    assert journal.segments == [3]
    store.close()


def test_data_dir_is_locked(tmp_path: Path) -> None:
    first = store_at(tmp_path)
    with pytest.raises(Exception, match="in use by another kestrelq server"):
        store_at(tmp_path)
    first.close()
    store_at(tmp_path).close()


def test_short_writes_are_completed(tmp_path: Path) -> None:
    def one_byte_at_a_time(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        return os.write(fd, bytes(b"".join(parts)[:1]))

    store = store_at(tmp_path, files=FilesWith(writev=one_byte_at_a_time))
    log = store.log_for("q")
    for record in RECORDS:
        log(record, False)
    store.close()
    assert recovered(tmp_path) == RECORDS


@pytest.mark.parametrize("short_after", [0, 1, 37], ids=["nothing", "one-byte", "mid-record"])
def test_a_short_write_of_a_batch_is_completed(tmp_path: Path, short_after: int) -> None:
    # A batch goes out in one writev; when the kernel takes only part of it, the rest is
    # written from where it stopped, not again from the start and not lost.
    calls: list[int] = []

    def short_first(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        data = b"".join(parts)
        calls.append(len(data))
        return os.write(fd, data[:short_after] if len(calls) == 1 else data)

    store = store_at(tmp_path, batch_writes=True, files=FilesWith(writev=short_first))
    assert store.batching
    log = store.log_for("q")
    for record in RECORDS:
        log(record, False)
    store.write_pending()
    store.close()
    assert len(calls) == 2 and calls[1] == calls[0] - short_after
    assert recovered(tmp_path) == RECORDS


def test_a_whole_last_record_with_a_bad_checksum_is_damage_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    journal = write(tmp_path, RECORDS[:3])
    data = bytearray(journal.read_bytes())
    last = len(data) - len(fmt.encode(RECORDS[2]))
    data[-1] ^= 0xFF  # the record is whole: only a write that was later damaged explains it
    journal.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        recovered(tmp_path)
    assert info.value.offset == last and info.value.detail == "checksum mismatch"
    assert info.value.drops == f"the {len(data) - last} bytes from offset {last} to the end " \
        "of the file (no whole record follows)"  # fmt: skip
    assert journal.read_bytes() == bytes(data)  # nothing cut off
    assert recovered(tmp_path, salvage=True) == RECORDS[:2]


def test_a_missing_segment_that_items_behind_are_read_from_stops_the_start(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path)
    log = store.log_for("q")
    journal = store.journals["q"]
    log(fmt.Add(Item(b"behind")), False)
    journal.mark()
    checkpoint: list[fmt.Record] = [fmt.CHECKPOINT, fmt.Behind(*journal.position(), 1, 6)]
    assert journal.rotate(checkpoint, behind=True)
    store.close()
    (tmp_path / SEGMENT_1).unlink()  # the directory lost the segment the checkpoint names
    store = store_at(tmp_path)
    assert list(store.recover("q")) == checkpoint
    store.journal("q").seek(1, journal.position()[1])  # as the queue does on BEHIND
    with pytest.raises(JournalCorrupt, match="segment holding the items behind is missing"):
        store.journal("q").verify_behind()
    store.close()


def test_a_new_segment_that_fails_on_a_full_disk_is_retried_slowly_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class FullForNewFiles(FilesWith):
        full = True

        def open_new(self, path: Path) -> int:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().open_new(path)

    files = FullForNewFiles()
    limits = StoreLimits(reserve_bytes=0, idle_compact_bytes=64)
    store = JournalStore(tmp_path, lambda n: FsyncPolicy("never"), limits, files=files)
    store.open()
    log = store.log_for("q")
    for _ in range(5):
        log(fmt.Add(Item(b"x" * 20)), False)
        log(fmt.REMOVE, False)
    journal = store.journals["q"]
    with caplog.at_level(logging.WARNING):
        for _ in range(3 * writer.ROTATE_RETRY_CHECKS):  # the server's ticks: 30 s
            if journal.should_rotate(empty=True, behind=False):
                assert not journal.rotate([fmt.CHECKPOINT], behind=False)
    failures = [r for r in caplog.records if "new segment for q failed" in r.getMessage()]
    assert len(failures) == 1  # not four lines a second while the disk is full
    files.full = False
    for _ in range(writer.ROTATE_RETRY_CHECKS):
        if journal.should_rotate(empty=True, behind=False):
            assert journal.rotate([fmt.CHECKPOINT], behind=False)
            break
    assert journal.segments == [2]
    store.close()


def test_fsync_durations_land_in_the_first_bucket_at_or_above_them() -> None:
    # Prometheus' buckets are "less than or equal": 1 ms exactly belongs to le="0.001".
    durations = Durations((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.5):
        durations.observe(seconds)
    counts, total_s = durations.snapshot()
    assert counts == [2, 1, 1]
    assert total_s == pytest.approx(0.5035)


def test_every_fsync_of_the_store_is_timed(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "data", lambda name: FsyncPolicy("always"), StoreLimits())
    store.open()
    try:
        log = store.log_for("q")
        log(fmt.Add(Item(b"x", added_ms=1)), True)
        store.write_pending()
        store.sync_always()
        counts, total_s = store.ledger.fsync_durations.snapshot()
        assert sum(counts) >= 1 and total_s > 0
    finally:
        store.close()
