"""A failed fsync is final (fsyncgate), and a new segment never leaves appends behind it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from fake_files import FilesWith

from kestrelq.journal import format as fmt
from kestrelq.journal.item import Item
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.store import JournalStore, StoreLimits


class FailingSyncs(FilesWith):
    """The real file system; the next `fail` fdatasyncs (or fsyncs of the chosen fd) raise
    EIO. After that they succeed, as Linux's do once it has reported a writeback error."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_fdatasync = 0
        self.fail_fsync_of = -1

    def fdatasync(self, fd: int) -> None:
        if self.fail_fdatasync:
            self.fail_fdatasync -= 1
            raise OSError(errno.EIO, "Input/output error")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if fd == self.fail_fsync_of:
            self.fail_fsync_of = -1
            raise OSError(errno.EIO, "Input/output error")
        super().fsync(fd)


def always_store(path: Path, files: FilesWith) -> JournalStore:
    store = JournalStore(
        path, lambda name: FsyncPolicy("always"), StoreLimits(reserve_bytes=0), files=files
    )
    store.open()
    return store


def add(data: bytes) -> fmt.Add:
    return fmt.Add(Item(data, 0, 1, 0, 0))


def test_nothing_written_before_a_failed_fsync_is_ever_acknowledged(tmp_path: Path) -> None:
    files = FailingSyncs()
    store = always_store(tmp_path, files)
    ledger = store.ledger
    log = store.log_for("q")
    log(add(b"first"), False)
    store.sync_always()
    assert ledger.durable(ledger.always_seq)
    acknowledged: list[str] = []
    log(add(b"A"), False)
    ledger.when_durable(ledger.always_seq, lambda: acknowledged.append("A"))
    files.fail_fdatasync = 1
    with pytest.raises(OSError):
        store.sync_always()
    # The next round's fdatasync would succeed: it must not be taken as covering A's record,
    # nor anything appended later (another client's B, in the same file).
    log(add(b"B"), False)
    ledger.when_durable(ledger.always_seq, lambda: acknowledged.append("B"))
    with pytest.raises(OSError):
        store.sync_always()
    store.sync_all()  # as at shutdown
    assert acknowledged == []
    assert not ledger.durable(ledger.always_seq)
    store.close()
    # The records are there all the same (nothing was lost here): a restart serves them,
    # and a client that retries A or B only makes a duplicate.
    store = always_store(tmp_path, FilesWith())
    assert [r for r in store.recover("q")] == [add(b"first"), add(b"A"), add(b"B")]
    store.close()


def test_a_failed_directory_fsync_is_final_too(tmp_path: Path) -> None:
    files = FailingSyncs()
    store = always_store(tmp_path, files)
    ledger = store.ledger
    store.log_for("q")(add(b"A"), False)  # creates the file: the directory owes an fsync
    files.fail_fsync_of = store._dir_fd
    with pytest.raises(OSError):
        store.sync_always()
    with pytest.raises(OSError):
        store.sync_always()  # the directory's fsync is not owed any more; still nothing
    assert not ledger.durable(ledger.always_seq)
    store.close()


def test_no_clean_mark_after_a_failed_fsync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = FailingSyncs()
    store = always_store(tmp_path, files)
    store.log_for("q")(add(b"A"), False)
    files.fail_fdatasync = 1
    with pytest.raises(OSError):
        store.sync_always()
    store.close()  # its sync_all "succeeds" now
    # The next start must not take this journal as cleanly stopped.
    assert not (tmp_path / ".clean").exists()
    assert "not marked as cleanly stopped" in caplog.text
    # Without the failure, the same stop leaves the mark.
    store = always_store(tmp_path, FailingSyncs())
    list(store.recover("q"))
    store.close()
    assert (tmp_path / ".clean").exists()


class NoDescriptorToReopen(FilesWith):
    """open_append of an existing file (a new segment's) fails with EMFILE while `full`."""

    full = False

    def open_append(self, path: Path, create: bool = True) -> int:
        if self.full and not create:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().open_append(path, create)


def test_a_new_segment_that_cannot_be_opened_leaves_appends_in_the_newest(
    tmp_path: Path,
) -> None:
    files = NoDescriptorToReopen()
    store = JournalStore(
        tmp_path, lambda n: FsyncPolicy("always"), StoreLimits(reserve_bytes=0), files=files
    )
    store.open()
    log = store.log_for("q")
    items = [add(b"a%d" % i) for i in range(3)]
    for record in items:
        log(record, False)
    store.sync_all()
    journal = store.journals["q"]
    files.full = True
    checkpoint: list[fmt.Record] = [fmt.CHECKPOINT, *(fmt.SnapAdd(r.item) for r in items)]
    # Renamed into place, the new segment is the newest: the journal switches to it, its
    # file to be opened by the next write.
    assert journal.rotate(checkpoint, behind=False)
    assert journal.current == 2 and journal.fd == -1
    files.full = False
    log(add(b"after"), False)
    store.sync_all()
    # Recovery replays the newest segment only: it must be the one "after" went to.
    store.close()
    store = always_store(tmp_path, FilesWith())
    assert [r for r in store.recover("q")] == [*checkpoint, add(b"after")]
    assert not list(tmp_path.glob("*.tmp"))
    store.close()


def test_a_failed_fsync_of_the_old_segment_during_a_new_one_is_final(tmp_path: Path) -> None:
    files = FailingSyncs()
    store = always_store(tmp_path, files)
    ledger = store.ledger
    log = store.log_for("q")
    log(add(b"A"), False)
    store.sync_always()
    log(add(b"B"), False)  # written, not yet fsynced
    journal = store.journals["q"]
    files.fail_fsync_of = journal.fd
    assert not journal.rotate([fmt.CHECKPOINT], behind=False)
    # B's file failed its fsync: the group fsync's retry must not acknowledge B.
    with pytest.raises(OSError):
        store.sync_always()
    assert not ledger.durable(ledger.always_seq)
    store.close()


def test_a_failed_directory_fsync_after_the_rename_still_switches_segments(
    tmp_path: Path,
) -> None:
    files = FailingSyncs()
    store = always_store(tmp_path, files)
    log = store.log_for("q")
    log(add(b"A"), False)
    store.sync_always()
    journal = store.journals["q"]
    files.fail_fsync_of = store._dir_fd
    with pytest.raises(OSError):
        journal.rotate([fmt.CHECKPOINT, fmt.SnapAdd(Item(b"A", 0, 1, 0, 0))], behind=False)
    assert journal.current == 2
    log(add(b"after"), False)
    store.sync_all()
    assert not store.ledger.durable(store.ledger.always_seq)  # the failure is final
    store.close()
    store = always_store(tmp_path, FilesWith())
    assert [r for r in store.recover("q")][-1] == add(b"after")
    store.close()
