"""All journals of a data directory: the lock, finding them, and the parts they share.

Theory of operation
-------------------
The store is the journal layer's one entry point for the queues (it is their `Storage`) and
for the server. It owns the data directory: an exclusive lock (`.lock`, so two servers never
append to the same files), the directory descriptor that makes creates, renames and unlinks
durable, and the list of segment files found at start. It builds the parts every queue's
journal shares and hands them over in one `JournalContext`:

- `Files`: every disk operation (the seam for failing and power-cut tests), `files.py`;
- the sequence `Ledger`: seq numbers, dirty files, group fsync, who waits, `ledger.py`;
- the `DiskReserve` that lets a full disk be drained, `reserve.py`;
- the `SegmentReader`: replay, verify, salvage, `reader.py`;
- and the per-queue `Journal` writer with its read-behind cursor, `writer.py`, `cursor.py`.

Files and descriptors are spent only on queues being written. A journal object is made when
its queue is first named, but its first segment file is created by its first write, and its
file is opened only to append: replay and read-behind map the files and let them go. `tick()`,
a few times a second, closes the file of a journal not appended to for `IDLE_TICKS` ticks and
gives back the disk room reserved ahead of it. Should the process run out of descriptors all
the same (thousands of queues written at once under `ulimit -n 1024`), every open journal file
is written, synced and closed, and the open is tried again. So a start-up with thousands of
queues needs a handful of descriptors, and a flood of names costs memory, bounded by the
queues' `max_queues`, not files.

With batched writes, journals holding
records in memory are listed in `unwritten`, in the order they got them; `write_pending`
writes them all, and a failure there goes to `on_write_lost`, which must not return (see
`writer`). Both callbacks are given at construction.

A clean stop leaves a `.clean` file, which the next start removes; a stop after a failed
fsync or a lost batched write leaves none, since records may be missing (see `ledger`). A
start that finds journals and no `.clean` follows a crash or a power cut, and every journal
whose policy is not `always` is named in a warning: records written after its last fsync may
be gone, and when the cut fell on a record boundary nothing else could tell.

Recovery: a torn tail of the newest segment is cut off with a warning. Damage anywhere else is
JournalCorrupt naming the file and the offset, and the server refuses to start unless told to
salvage; a salvaged queue is listed in `needs_rotation`, so the server writes it a fresh
segment and the damaged one is no longer needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from kestrelq.errors import JournalError, JournalWriteFailed
from kestrelq.journal.files import Files, fallocate_keep_size
from kestrelq.journal.format import Record
from kestrelq.journal.ledger import Ledger
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.reader import SegmentReader
from kestrelq.journal.reserve import DiskReserve
from kestrelq.journal.writer import (
    SUFFIX,
    Batching,
    Journal,
    JournalContext,
    StoreLimits,
    parse_segment_name,
    segment_name,
)

__all__ = [
    "SUFFIX",
    "Journal",
    "JournalStore",
    "StoreLimits",
    "fallocate_keep_size",
    "parse_segment_name",
    "segment_name",
]


logger = logging.getLogger(__name__)


def _raise(exc: JournalError) -> None:
    raise exc


class JournalStore:
    """All journals of a data directory (the `Storage` of a QueueCollection)."""

    def __init__(
        self,
        data_dir: str | Path,
        policy_for: Callable[[str], FsyncPolicy],
        limits: StoreLimits = StoreLimits(),
        salvage: bool = False,
        batch_writes: bool = False,
        files: Files | None = None,
        on_write_lost: Callable[[JournalError], None] = _raise,
        on_segment_full: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.files = files if files is not None else Files()
        self.policy_for = policy_for
        self.limits = limits
        self.salvage = salvage
        self.journals: dict[str, Journal] = {}
        self.unwritten: list[Journal] = []
        self.needs_rotation: set[str] = set()
        # Journals whose file is open now (only those being written; see `tick`).
        self._open_files: set[Journal] = set()
        # Called when batched records could not be written; must not return (see writer).
        self._on_write_lost = on_write_lost
        self.ledger = Ledger(self.files, lambda: bool(self.unwritten), self.fsync_dir)
        self.reserve = DiskReserve(self.files, self.data_dir / ".reserve", limits.reserve_bytes)
        self._batching = Batching(batch_writes and self.files.can_fallocate)
        self._ctx = JournalContext(
            data_dir=self.data_dir,
            files=self.files,
            ledger=self.ledger,
            reserve=self.reserve,
            reader=SegmentReader(self.files, limits.max_record_bytes, salvage, self._salvaged),
            limits=limits,
            batching=self._batching,
            salvage=salvage,
            on_pending=self._enlist,
            write_pending=self.write_pending,
            on_segment_full=on_segment_full,
            on_opened=self._opened,
            on_closed=self._open_files.discard,
            on_no_descriptor=self._close_idle_files,
            fsync_dir=self.fsync_dir,
        )
        self._found: dict[str, list[int]] = {}
        self._lock_fd = -1
        self._dir_fd = -1
        self._unclean = False
        self._write_lost = False

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create and lock the data directory, remove stale temp files, set the reserve."""
        files = self.files
        files.mkdir(self.data_dir)
        lock_fd = files.lock(self.data_dir / ".lock")
        if lock_fd is None:
            raise JournalError(f"{self.data_dir} is in use by another kestrelq server")
        self._lock_fd = lock_fd
        self._dir_fd = files.open_dir(self.data_dir)
        for name in files.listdir(self.data_dir):
            if name.endswith(f"{SUFFIX}.tmp"):
                files.unlink(self.data_dir / name)
        self._found = self._scan_dir()
        # No clean-stop mark: the last run crashed or lost power (see `recover`).
        clean = self.data_dir / ".clean"
        self._unclean = bool(self._found) and not files.exists(clean)
        if files.exists(clean):
            files.unlink(clean)
            self.fsync_dir()  # a crash from now on must not find it
        self.reserve.ensure()

    def close(self) -> None:
        self.sync_all()
        for journal in self.journals.values():
            journal.close()
        self.journals.clear()
        if self.ledger.failed is not None or self._write_lost:
            # The last fsync "succeeded" only because a failed one came first (fsyncgate), or
            # records never reached their file: the next start must not take the journal as
            # whole, so it gets no `.clean` and warns as after a crash.
            logger.warning("%s: not marked as cleanly stopped: journal records may be lost",
                           self.data_dir)  # fmt: skip
        elif self._dir_fd >= 0:
            # Everything is on disk: say so to the next start (after a crash it is missing).
            try:
                self.files.close(self.files.open_new(self.data_dir / ".clean"))
                self.fsync_dir()
            except OSError:
                logger.warning("could not mark %s as cleanly stopped", self.data_dir)
        for fd in (self._dir_fd, self._lock_fd):
            if fd >= 0:
                self.files.close(fd)
        self._dir_fd = self._lock_fd = -1

    def existing_names(self) -> list[str]:
        return sorted(self._found)

    def _scan_dir(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for filename in self.files.listdir(self.data_dir):
            parsed = parse_segment_name(filename)
            if parsed is not None:
                found.setdefault(parsed[0], []).append(parsed[1])
        return found

    def tick(self) -> None:
        """Called a few times a second: close the files of journals that went idle, and give
        back the disk room reserved ahead of them."""
        for journal in list(self._open_files):
            journal.idle_tick()

    @property
    def open_files(self) -> int:
        return len(self._open_files)

    def _opened(self, journal: Journal) -> None:
        self._open_files.add(journal)
        cap = self.limits.max_open_files
        if cap and len(self._open_files) > cap:
            self._close_least_recent(len(self._open_files) - cap + cap // 8, keep=journal)

    def _close_least_recent(self, count: int, keep: Journal) -> None:
        """Over the cap on open journal files: close `count` of them, least recently written
        first (each synced first if its records wait for an fsync). A flood of queues thus
        costs reopening files, never the descriptors that connections need."""
        if self.unwritten:
            self.write_pending()
        victims = sorted(
            (j for j in self._open_files if j is not keep), key=lambda j: -j.idle_ticks
        )
        closed = 0
        for journal in victims:
            if closed >= count:
                break
            if self.ledger.is_dirty(journal):
                self.ledger.sync_one(journal)
            closed += journal.close_if_clean()

    def _close_idle_files(self) -> bool:
        """Out of descriptors: close every open journal file (writing and syncing first what
        its records need), so that the journal being opened can be. True if any was closed."""
        if self.unwritten:
            self.write_pending()
        closed = 0
        for journal in list(self._open_files):
            self.ledger.sync_one(journal)
            closed += journal.close_if_clean()
        logger.warning("out of file descriptors: closed %d journal files", closed)
        return closed > 0

    def _enlist(self, journal: Journal) -> None:
        self.unwritten.append(journal)

    def _salvaged(self, path: Path) -> None:
        parsed = parse_segment_name(path.name)
        if parsed is not None:
            self.needs_rotation.add(parsed[0])

    # -- Storage protocol ----------------------------------------------------------------------

    def journal(self, name: str) -> Journal:
        journal = self.journals.get(name)
        if journal is None:
            segments = self._found.get(name, [])
            try:
                journal = Journal(self._ctx, name, self.policy_for(name), segments)
            except OSError as exc:
                # Out of file descriptors or the like: refuse this queue, keep serving.
                raise JournalWriteFailed(
                    f"cannot open the journal of {name}: {exc.strerror}"
                ) from exc
            self._found.pop(name, None)
            self.journals[name] = journal
        return journal

    def log_for(self, name: str) -> Callable[[Record, bool], None]:
        return self.journal(name).append

    def behind_for(self, name: str) -> Journal:
        return self.journal(name)

    def drop(self, name: str) -> None:
        journal = self.journals.pop(name, None)
        if journal is not None:
            self.ledger.forget(journal)
            if journal in self.unwritten:
                self.unwritten.remove(journal)
            journal.delete()
        self.fsync_dir()

    def set_policies(self) -> None:
        for name, journal in self.journals.items():
            journal.set_policy(self.policy_for(name))

    # -- reading -------------------------------------------------------------------------------

    def recover(self, name: str) -> Iterator[Record]:
        """The records of a queue's newest segment, repairing a torn tail."""
        journal = self.journal(name)
        if self._unclean and journal.policy.mode != "always":
            # Records written after the last fsync may be gone, cut at a record boundary where
            # no reader can see it: say so, rather than start as if nothing happened.
            logger.warning(
                "%s: the server did not stop cleanly (a crash or a power cut) and this queue's "
                "fsync policy is %s: its last records before the stop may be LOST",
                journal.path(), journal.policy,
            )  # fmt: skip
        return journal.replay()

    def records(self, path: Path, start: int, repair: bool) -> Iterator[tuple[Record, int]]:
        """(record, end offset) from `start` to the end of one segment file."""
        return self._ctx.reader.records(path, start, repair)

    # -- batched writes and durability (see ledger for the seq numbers) ------------------------

    def write_pending(self) -> None:
        """Write every journal's batched records; before any reply that depends on them."""
        unwritten, self.unwritten = self.unwritten, []  # swapped, not copied: every batch
        try:
            for journal in unwritten:
                journal.write_pending()
        except JournalError as exc:
            self._write_lost = True
            self._on_write_lost(exc)
            raise
        self.ledger.all_written()

    @property
    def batching(self) -> bool:
        return self._batching.enabled

    @property
    def fsyncs(self) -> int:
        return self.ledger.fsyncs

    def take_dirty(self, periodic: bool = False) -> tuple[list[int], int]:
        return self.ledger.take_dirty(periodic)

    def sync_always(self) -> None:
        self.ledger.sync_always()

    def fsync_fds(self, fds: list[int]) -> None:
        self.ledger.fsync_fds(fds)

    def sync_all(self) -> None:
        if self.unwritten:
            self.write_pending()
        self.ledger.sync_all()

    def fsync_dir(self) -> None:
        if self._dir_fd >= 0:
            self.ledger.fsync(self._dir_fd)  # a failure is the ledger's to remember

    # -- disk-full reserve (see reserve) ---------------------------------------------------

    @property
    def reserve_released(self) -> bool:
        return self.reserve.released

    def ensure_reserve(self) -> bool:
        return self.reserve.ensure()

    def release_reserve(self) -> bool:
        return self.reserve.release()
