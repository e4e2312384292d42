"""Batched journal writes: records kept until write_pending, disk room reserved up front."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_files import FilesWith

from kestrelq.errors import JournalError, JournalFull, JournalWriteFailed
from kestrelq.journal import format as fmt
from kestrelq.journal import writer
from kestrelq.journal.files import fallocate_keep_size
from kestrelq.journal.item import Item
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.store import SUFFIX, JournalStore, StoreLimits, segment_name


def batched_store(path: Path, policy: str = "always", reserve: int = 0, **kw: Any) -> JournalStore:
    store = JournalStore(
        path,
        lambda name: FsyncPolicy.parse(policy),
        StoreLimits(reserve_bytes=reserve),
        batch_writes=True,
        **kw,
    )
    store.open()
    return store


def on_disk(path: Path, name: str = "q") -> list[fmt.Record]:
    reader = JournalStore(path, lambda n: FsyncPolicy("never"), StoreLimits(reserve_bytes=0))
    return [r for r, _ in reader.records(path / segment_name(name, 1), 4, repair=False)]


def add(data: bytes) -> fmt.Add:
    return fmt.Add(Item(data, 0, 1, 0, 0))


def test_fallocate_is_there_on_linux() -> None:
    # Without it the server silently writes record by record: this machine must batch.
    assert fallocate_keep_size is not None


def test_records_reach_the_file_only_at_write_pending(tmp_path: Path) -> None:
    store = batched_store(tmp_path)
    journal = store.journal("q")
    journal.append(add(b"one"), False)
    journal.append(fmt.Open(1), True)
    journal.append(fmt.Confirm(1), True)
    # Created for its room, zeros written ahead (so appends change no size); no record yet.
    assert not journal.path().read_bytes().strip(b"\0")
    assert store.unwritten == [journal]
    # A reply waits for the ADD; the read's records (open, confirm) hold no reply.
    assert store.ledger.seq == 3 and store.ledger.always_seq == 1
    # An fsync started now covers none of them: they are not in the file.
    fds, covered = store.take_dirty()
    assert fds == [] and covered == 0
    store.write_pending()
    assert store.unwritten == [] and store.ledger.written_seq == 3
    assert on_disk(tmp_path) == [add(b"one"), fmt.Open(1), fmt.Confirm(1)]
    fds, covered = store.take_dirty()
    assert len(fds) == 1 and covered == 3
    store.fsync_fds(fds)
    store.close()


def test_big_items_are_not_joined_and_many_records_fit_one_call(tmp_path: Path) -> None:
    calls: list[int] = []

    def counting_writev(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        calls.append(len(parts))
        return os.writev(fd, parts)

    store = batched_store(tmp_path, files=FilesWith(writev=counting_writev))
    journal = store.journal("q")
    calls.clear()
    big = bytes(range(256)) * 256  # 64 KiB: passed to writev as it is, not copied
    records: list[fmt.Record] = [add(b"%d" % i) for i in range(3000)]
    records += [add(big), fmt.REMOVE]
    for record in records:
        journal.append(record, False)
    store.write_pending()
    # 3000 small records joined into one buffer, then the big item's header and data, then
    # the REMOVE: one writev (IOV_MAX is far away).
    assert calls == [4]
    assert on_disk(tmp_path) == records
    store.close()


def test_more_buffers_than_writev_takes_are_split(tmp_path: Path) -> None:
    store = batched_store(tmp_path)
    journal = store.journal("q")
    big = b"x" * (32 << 10)
    records = [add(big) for _ in range(1500)]  # 3000 buffers; IOV_MAX is 1024 on Linux
    for record in records:
        journal.append(record, False)
    store.write_pending()
    assert on_disk(tmp_path) == records
    store.close()


def test_room_reserved_ahead_grows_to_a_megabyte_and_is_given_back_when_idle(
    tmp_path: Path,
) -> None:
    calls: list[tuple[int, int]] = []

    def recording(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        assert fallocate_keep_size is not None
        fallocate_keep_size(fd, offset, length)

    store = batched_store(tmp_path, files=FilesWith(fallocate=recording))
    journal = store.journal("q")
    journal.append(add(b"x"), False)
    # A queue written once holds a few KiB of disk, not a megabyte.
    assert calls == [(0, 4 + 34 + 4096)]
    for _ in range(20_000):
        journal.append(add(b"x" * 100), False)
    # The room doubles each time it runs out, up to a megabyte a call: few calls.
    lengths = [length for _, length in calls]
    assert len(calls) <= 12 and max(lengths) < (1 << 20) + 200
    assert sum(lengths) >= 20_000 * 130
    store.write_pending()
    size = os.path.getsize(journal.path())
    # Zeros written into the room: the file's size covers it, past the records.
    assert journal.size < size == journal.allocated
    assert not journal.path().read_bytes()[journal.size :].strip(b"\0")
    blocks_while_written = os.stat(journal.path()).st_blocks
    store.sync_always()
    for _ in range(writer.IDLE_TICKS):
        store.tick()
    # Idle: the file is closed and the room past its end given back.
    assert journal.fd == -1 and store.open_files == 0
    assert os.stat(journal.path()).st_blocks < blocks_while_written
    assert os.stat(journal.path()).st_blocks * 512 < journal.size + (64 << 10)
    assert os.path.getsize(journal.path()) == journal.size
    journal.append(add(b"again"), False)  # reopened by the next write
    assert store.open_files == 1
    store.close()
    assert on_disk(tmp_path)[-1] == add(b"again")


def test_disk_full_refuses_before_anything_is_logged(tmp_path: Path) -> None:
    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = batched_store(tmp_path, reserve=4096, files=FilesWith(fallocate=no_room))
    journal = store.journal("q")
    with pytest.raises(JournalFull):
        journal.append(add(b"new item"), False)
    assert store.unwritten == [] and store.ledger.seq == 0
    # An essential record (a read) frees the reserve and tries once more; it still fails
    # here (the seam never has room), and is refused cleanly too.
    with pytest.raises(JournalFull):
        journal.append(fmt.REMOVE, True)
    assert store.reserve_released
    assert not (tmp_path / ".reserve").exists()
    assert store.unwritten == [] and store.ledger.seq == 0
    store.close()


def test_the_last_bytes_of_a_disk_are_used_exactly(tmp_path: Path) -> None:
    # The megabyte ahead does not fit, the record itself does: it is accepted.
    free = {"bytes": 300}

    def tight(fd: int, offset: int, length: int) -> None:
        if length > free["bytes"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        free["bytes"] -= length

    store = batched_store(tmp_path, files=FilesWith(fallocate=tight))
    journal = store.journal("q")
    journal.append(add(b"a" * 100), False)
    with pytest.raises(JournalFull):
        journal.append(add(b"b" * 300), False)
    store.write_pending()
    assert on_disk(tmp_path) == [add(b"a" * 100)]
    store.close()


def test_essential_records_free_the_reserve_when_room_runs_out(tmp_path: Path) -> None:
    state = {"full": True}

    def full_until_reserve_freed(fd: int, offset: int, length: int) -> None:
        if state["full"] and (tmp_path / ".reserve").exists():
            raise OSError(errno.ENOSPC, "No space left on device")

    files = FilesWith(fallocate=full_until_reserve_freed)
    store = batched_store(tmp_path, reserve=4096, files=files)
    journal = store.journal("q")
    with pytest.raises(JournalFull):
        journal.append(add(b"refused"), False)
    journal.append(fmt.REMOVE, True)  # a read: frees the reserve, then fits
    assert store.reserve_released
    with pytest.raises(JournalFull, match="new items refused"):
        journal.append(add(b"still refused"), False)
    store.write_pending()
    assert on_disk(tmp_path) == [fmt.REMOVE]
    store.close()


def test_without_fallocate_each_record_is_written_at_once(tmp_path: Path) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    store = batched_store(tmp_path, files=FilesWith(fallocate=unsupported))
    journal = store.journal("q")
    journal.append(add(b"one"), False)
    assert not store.batching and store.unwritten == []
    assert on_disk(tmp_path) == [add(b"one")]
    journal.append(add(b"two"), False)
    assert on_disk(tmp_path) == [add(b"one"), add(b"two")]
    store.close()


def test_a_failed_batched_write_is_reported_as_lost(tmp_path: Path) -> None:
    lost: list[JournalError] = []

    def eio(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        raise OSError(errno.EIO, "Input/output error")

    files = FilesWith()
    store = batched_store(tmp_path, files=files, on_write_lost=lost.append)
    journal = store.journal("q")
    journal.append(add(b"one"), False)
    files.writev_fn = eio
    with pytest.raises(JournalWriteFailed):
        store.write_pending()
    assert len(lost) == 1 and "Input/output error" in str(lost[0])
    files.writev_fn = None
    assert os.path.getsize(journal.path()) == 0  # nothing half-written was left behind
    store.close()


def test_reading_behind_writes_pending_records_first(tmp_path: Path) -> None:
    store = batched_store(tmp_path)
    journal = store.journal("q")
    journal.append(add(b"in memory"), False)
    journal.append(add(b"behind"), False)
    journal.mark()  # read-behind starts at the last record appended, still pending
    assert store.unwritten == [journal]
    items = journal.read(1, 1 << 20)
    assert [i.data for i in items] == [b"behind"]
    assert store.unwritten == []
    store.close()


def test_rotation_and_close_write_pending_records(tmp_path: Path) -> None:
    store = batched_store(tmp_path)
    journal = store.journal("q")
    journal.append(add(b"one"), False)
    assert journal.rotate([fmt.CHECKPOINT, fmt.SnapAdd(Item(b"one", 0, 1, 0, 0))], False)
    assert sorted(p.name for p in tmp_path.glob("*" + SUFFIX)) == [segment_name("q", 2)]
    journal.append(add(b"two"), False)
    store.close()
    records = [
        r
        for r, _ in JournalStore(tmp_path, lambda n: FsyncPolicy("never")).records(
            tmp_path / segment_name("q", 2), 4, repair=False
        )
    ]
    assert records[-1] == add(b"two")


def test_a_dropped_queue_forgets_its_pending_records(tmp_path: Path) -> None:
    store = batched_store(tmp_path)
    store.journal("q").append(add(b"one"), False)
    store.drop("q")
    assert store.unwritten == []
    store.write_pending()
    assert list(tmp_path.glob("*" + SUFFIX)) == []
    store.close()
