"""The sequence ledger: which appends are written, which are durable, and who waits for them.

Theory of operation
-------------------
Every append to any journal gets the next sequence number (`seq`). Three marks trail it:

    synced_seq  <=  written_seq  <=  seq
    (on disk)       (in a file)      (appended; batched records may be in memory still)

and `always_seq` is the seq of the last append whose reply waits for its fsync (to a journal
whose policy is `always`; a read's record only with `sync_reads`, see `FsyncPolicy.waits_for`):
a reply to a command that made such an append may go out only once `synced_seq` has reached
it. An fsync started now covers `written_seq`, never more: records still batched in memory are
not in the file it flushes.

A read's record under `always` without `sync_reads` does not move `always_seq`, but its file
is dirty like any other `always` file: the next group commit fsyncs it, whoever waits for that
one, and `unsynced` tells the server's tick to run a round when nobody does. Its reply is held
only by what it must not overtake: a connection's replies wait for `always_seq` as it stands
after their commands, so a read never hands out a message whose ADD is not durable yet.

Group commit: the ledger keeps the set of `always` files written since their last fsync, and
whether a journal file was created since the directory's last fsync (a record is durable only
if the directory still names its file after a power cut). The server calls `sync_always()` once
per turn of its event loop, which fdatasyncs each of them and the directory if it owes one (one
round shared by every command of the turn, and every file created in it; what arrives meanwhile
rides on the next), then advances `synced_seq` and runs the callbacks of everyone waiting for a
seq it now covers.
`periodic` files are collected by `take_dirty(periodic=True)` and fsynced in a worker thread
by `fsync_fds`; nobody waits for those.

The API a server needs, and all it needs, to hold a reply for its fsync:

    seq = ledger.always_seq            # after running the command: the seq the reply needs
    ledger.durable(seq)                # True: reply now
    ledger.when_durable(seq, reply)    # else: called from sync_always() once it is
    ledger.waiting                     # True while someone waits: schedule sync_always()

A callback must not raise; it runs inside `sync_always()`.

A failed fsync is final (fsyncgate). Linux reports a writeback error once, marks the pages
clean and may drop them: a second fsync of the same file then "succeeds" with the records gone.
So once any fsync of the store fails (a file's, the directory's, in either thread), `failed`
holds the error, `synced_seq` never moves again and `sync_always()` raises at once: nothing
written before the failure may ever be acknowledged. Only a restart, which recovers from what
the files really hold, makes the journal trustworthy again.
"""

from __future__ import annotations

import bisect
import errno
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from kestrelq.journal.files import Files


class Syncable(Protocol):
    """A journal file the ledger can fsync: its current descriptor, -1 when closed."""

    @property
    def fd(self) -> int: ...


# Upper bounds of the fsync duration buckets, in seconds: from a fast SSD's ~100 us to a
# stalled disk's seconds.
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)  # fmt: skip


class Durations:
    """How long something took, as counts per bucket and a sum: a histogram kept in plain
    numbers, which the server's metrics port exports (the journal imports no metrics library).

    Fsyncs run in the loop thread and, for periodic queues, in a worker thread, so an update
    takes a lock; it is nothing beside the fsync it times.
    """

    def __init__(self, bounds: tuple[float, ...] = FSYNC_BUCKETS_S) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self._sum_s = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.bounds, seconds)  # the first bound >= seconds
        with self._lock:
            self._counts[index] += 1
            self._sum_s += seconds

    def snapshot(self) -> tuple[list[int], float]:
        """(count per bucket, the last one above every bound; the sum of seconds)."""
        with self._lock:
            return list(self._counts), self._sum_s


class Ledger:
    """Sequence numbers and fsync bookkeeping for all journals of a store."""

    def __init__(
        self, files: Files, has_unwritten: Callable[[], bool], sync_dir: Callable[[], None]
    ) -> None:
        self._files = files
        # Whether batched records are still in memory (then written_seq cannot catch up).
        self._has_unwritten = has_unwritten
        # fsync the data directory; owed once a journal file was created in it.
        self._sync_dir = sync_dir
        self._dir_dirty = False
        self.seq = 0
        self.always_seq = 0
        self.written_seq = 0
        self.synced_seq = 0
        # Rounds of fsync: the loop thread counts `always` rounds, the worker thread periodic
        # ones, each in its own field, so no count is lost between threads.
        self._always_rounds = 0
        self._periodic_rounds = 0
        self._dirty_always: set[Syncable] = set()
        self._dirty_periodic: set[Syncable] = set()
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        # The first fsync that failed; from then on nothing becomes durable (see the module).
        self.failed: OSError | None = None
        # Every fsync and fdatasync of the store, file or directory, in either thread.
        self.fsync_durations = Durations()

    @property
    def fsyncs(self) -> int:
        return self._always_rounds + self._periodic_rounds

    # -- what the journals report ----------------------------------------------------------

    def appended(self, waits: bool) -> None:
        """One record appended; `waits`: the reply to its command waits for its fsync."""
        self.seq += 1
        if waits:
            self.always_seq = self.seq

    def written(self, file: Syncable, mode: str) -> None:
        """Records of `file` reached it (policy `mode`): it needs its fsync now."""
        if mode == "always":
            self._dirty_always.add(file)
        elif mode == "periodic":
            self._dirty_periodic.add(file)

    def file_created(self) -> None:
        """A journal file was created: the next fsync round syncs the directory too, so that
        the records it makes durable are not in a file the directory forgot."""
        self._dir_dirty = True

    def all_written(self) -> None:
        """Every batched record is in its file."""
        self.written_seq = self.seq

    def is_dirty(self, file: Syncable) -> bool:
        """Whether `file` has written records its policy still owes an fsync."""
        return file in self._dirty_always or file in self._dirty_periodic

    def sync_one(self, file: Syncable) -> None:
        """fdatasync one file now (it is about to be closed) and take it off the dirty sets.

        synced_seq does not move: the other dirty files are not synced yet.
        """
        if self.is_dirty(file) and file.fd >= 0:
            self.fdatasync(file.fd)
        self.forget(file)

    def forget(self, file: Syncable) -> None:
        """`file` was closed or its records were just fsynced another way (a new segment)."""
        self._dirty_always.discard(file)
        self._dirty_periodic.discard(file)

    # -- durability ------------------------------------------------------------------------

    def durable(self, seq: int) -> bool:
        return seq <= self.synced_seq

    def when_durable(self, seq: int, callback: Callable[[], None]) -> None:
        """Call `callback` from the `sync_always()` that makes `seq` durable (now if it is)."""
        if self.durable(seq):
            callback()
        else:
            heapq.heappush(self._waiters, (seq, next(self._order), callback))

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    @property
    def unsynced(self) -> bool:
        """`always` files hold written records that no fsync has covered yet, though nobody
        may wait for them (a read's records): the next group commit is owed them."""
        return bool(self._dirty_always)

    def sync_always(self) -> None:
        """fdatasync every `always` file with written records, here; advance synced_seq.

        (fdatasync: an append's new size is flushed with the data; the timestamps need not.)
        """
        self._check_not_failed()
        covered = self._written_upto()
        self._sync_dir_if_owed()
        if self._dirty_always:
            for file in self._dirty_always:
                if file.fd >= 0:
                    self.fdatasync(file.fd)
            self._always_rounds += 1
        self._dirty_always.clear()
        self._synced(covered)

    def take_dirty(self, periodic: bool = False) -> tuple[list[int], int]:
        """Duplicated fds of files that need an fsync, and the seq the fsync will cover.

        Only written records count: batched ones still pending are covered by a later fsync.
        """
        covered = self._written_upto()
        self._sync_dir_if_owed()  # here, in the loop thread: it is one call per round
        dirty = self._dirty_periodic if periodic else self._dirty_always
        fds = []
        for file in dirty:
            if file.fd < 0:
                continue
            try:
                # A duplicate, so a segment switch closing the fd meanwhile cannot make the
                # worker thread fsync some other file.
                fds.append(self._files.dup(file.fd))
            except OSError:
                # No descriptor to spare (EMFILE): fsync right here, in the loop thread.
                self.fsync(file.fd)
        dirty.clear()
        return fds, covered

    def fsync_fds(self, fds: Iterable[int]) -> None:
        """fdatasync (in a worker thread: periodic syncs) and close the duplicated fds."""
        fds = list(fds)
        try:
            for fd in fds:
                self.fdatasync(fd)
        finally:
            for fd in fds:
                self._files.close(fd)
        self._periodic_rounds += 1

    def sync_all(self) -> None:
        """fsync every dirty file, whatever its policy (start-up and shutdown)."""
        fds, seq = self.take_dirty()
        more, _ = self.take_dirty(periodic=True)
        self.fsync_fds(fds + more)
        self._synced(seq)

    # -- every fsync of the store goes through these, so that a failure is never forgotten --

    def fsync(self, fd: int) -> None:
        started = time.perf_counter()
        try:
            self._files.fsync(fd)
        except OSError as exc:
            self.fsync_failed(exc)
            raise
        finally:
            self.fsync_durations.observe(time.perf_counter() - started)

    def fdatasync(self, fd: int) -> None:
        started = time.perf_counter()
        try:
            self._files.fdatasync(fd)
        except OSError as exc:
            self.fsync_failed(exc)
            raise
        finally:
            self.fsync_durations.observe(time.perf_counter() - started)

    def fsync_failed(self, exc: OSError) -> None:
        """An fsync failed: what it should have made durable may be gone, whatever a retry
        says, so from now on nothing is acknowledged (see the module)."""
        if self.failed is None:
            self.failed = exc

    def _check_not_failed(self) -> None:
        if self.failed is not None:
            raise OSError(
                self.failed.errno or errno.EIO, f"an earlier fsync failed ({self.failed})"
            )

    def _sync_dir_if_owed(self) -> None:
        if self._dir_dirty:
            self._dir_dirty = False
            self._sync_dir()

    def _synced(self, covered: int) -> None:
        if self.failed is not None:
            # A later fsync's success says nothing about the pages the failed one lost.
            return
        self.synced_seq = max(self.synced_seq, covered)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.synced_seq:
            heapq.heappop(waiters)[2]()

    def _written_upto(self) -> int:
        """The seq an fsync started now covers: every append, unless some are still batched."""
        if not self._has_unwritten():
            self.written_seq = self.seq
        return self.written_seq
