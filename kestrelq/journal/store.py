"""Journal files on disk: append, recover, segments, fsync bookkeeping, the disk-full reserve.

Theory of operation
-------------------
Each queue's journal is a series of segment files, `<data_dir>/<queue>.<n>.kqj`; appends go to
the newest. Every record is written with one `writev()` call before the command that caused it
is answered (the journal is the truth; memory is a cache). A failed write is cut back off the
file with `ftruncate`, so the file never holds half a record that a later append would bury.

Segments: a new segment starts with a checkpoint (the queue's state as records, see
`format`), written through a temp file, fsync, rename and directory fsync. It is started once
the current one has grown by `segment_bytes`, when an idle queue is empty, and at shutdown.
Older segments are deleted as soon as no item behind (read-behind) points into them, so the
total on disk stays near the live data, and start-up replays only the newest segment.

Batched writes: with `batch_writes` on (the server's default), `append` does not write at
once. It reserves room past the end of the file with `fallocate(KEEP_SIZE)`, a megabyte at a
time, so that a full disk is still found *before* the command changes anything, and keeps the
record; the server calls `write_pending()` before it sends replies, so a pipelined batch of
commands costs one `writev` per queue (and a reliable read's confirm and open, one). A write
that fails after its commands were applied leaves memory ahead of the journal, and none of
their replies has gone out: `on_write_lost` (the server: exit at once, and be restarted from
the journal) is the only safe answer. Without `fallocate` the store writes each record
at once, as with batching off.

Durability: the store numbers appends (`seq`). For queues whose policy is `always`, the server
must not reply until `synced_seq` has passed the seq of the command's last append; once per
turn of its event loop it fsyncs every dirty file (`sync_always`), so all the commands of that
turn share one fsync, and what arrives meanwhile rides on the next (group commit). `periodic`
files are fsynced by a timer in a worker thread and nobody waits; `never` files never.

Disk full: at start the store sets aside `reserve_bytes` in a `.reserve` file. When a write
fails with ENOSPC, new items are refused (JournalFull), but records that take items *out*
(remove, open, confirm, unremove) may free the reserve and go on, so consumers can keep
draining a full disk. The reserve is re-created, and new items accepted again, once there is room.

Recovery: a record cut short at the end of the newest segment (a torn tail) is cut off with a
warning. A damaged record followed by valid ones, or anywhere in an older segment that items
behind will be read from, is corruption: JournalCorrupt names the file and the offset, and the
server refuses to start unless told to salvage (skip the damaged bytes, then write a fresh
segment so that the damage is no longer needed).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kestrelq.errors import JournalCorrupt, JournalError, JournalFull, JournalWriteFailed
from kestrelq.journal.format import (
    HEADER,
    MAGIC,
    RECORD_OVERHEAD,
    Add,
    BadRecord,
    Record,
    decode,
    encode,
    encode_parts,
)
from kestrelq.queue.config import FsyncPolicy
from kestrelq.queue.item import Item

logger = logging.getLogger(__name__)

SUFFIX = ".kqj"
_WRITE_CHUNK_BYTES = 1 << 20
_RELEASE_BYTES = 8 << 20
# Room reserved ahead of a batched journal's end, one fallocate call per this many bytes.
_PREALLOCATE_BYTES = 1 << 20
_FALLOC_FL_KEEP_SIZE = 1
# Batched records up to this size are joined into one buffer.
_JOIN_BYTES = 16 << 10
# writev takes at most this many buffers (EINVAL past it).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def _load_fallocate() -> Callable[[int, int, int], None] | None:
    """fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) from libc, None where there is none.

    os.posix_fallocate would grow the file, and appends would land after the zeros; KEEP_SIZE
    reserves the blocks and leaves the size (where O_APPEND writes) alone.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int

    def fallocate(fd: int, offset: int, length: int) -> None:
        if func(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return fallocate


fallocate_keep_size = _load_fallocate()


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_record_bytes: int = (64 << 20) + 64
    reserve_bytes: int = 8 << 20
    segment_bytes: int = 64 << 20  # start a new segment after this much growth
    idle_compact_bytes: int = 64 << 10  # an empty queue's segment is rewritten past this


def segment_name(name: str, number: int) -> str:
    return f"{name}.{number:010d}{SUFFIX}"


def parse_segment_name(filename: str) -> tuple[str, int] | None:
    """(queue, segment number) of a journal file name, None for anything else."""
    if not filename.endswith(SUFFIX):
        return None
    queue, dot, number = filename[: -len(SUFFIX)].rpartition(".")
    if not dot or not number.isdigit():
        return None
    return queue, int(number)


class Journal:
    """The journal of one queue: its segment files, appends, checkpoints, read-behind."""

    def __init__(
        self, store: JournalStore, name: str, policy: FsyncPolicy, segments: list[int]
    ) -> None:
        self.store = store
        self.name = name
        self.policy = policy
        self.segments = sorted(segments) or [1]
        self.sizes: dict[int, int] = {}
        self.current = self.segments[-1]
        self.fd = -1
        self.size = 0
        self.base_size = 0
        self.last_offset = 0
        self.pointer = (self.current, len(MAGIC))
        self.rotations = 0
        # Batched records not yet written, and how far past `size` the disk room is reserved.
        # Small records are joined in `pending_tail` (one copy is cheaper than an iovec each);
        # big ones stay separate buffers, so an item's data is never copied.
        self.pending: list[bytes | bytearray] = []
        self.pending_tail = bytearray()
        self.pending_bytes = 0
        self.allocated = 0
        self._open_current()

    def path(self, number: int | None = None) -> Path:
        return self.store.data_dir / segment_name(
            self.name, self.current if number is None else number
        )

    @property
    def total_size(self) -> int:
        return sum(self.sizes.get(n, 0) for n in self.segments[:-1]) + self.size

    def _open_current(self) -> None:
        for number in self.segments[:-1]:
            self.sizes[number] = self.path(number).stat().st_size
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self.fd = os.open(self.path(), flags, 0o644)
        self.size = self.base_size = self.allocated = os.fstat(self.fd).st_size
        if self.size < len(MAGIC):
            # New file, or one torn inside its header: start it cleanly.
            os.ftruncate(self.fd, 0)
            self.size = 0
            self._write([MAGIC])
            self.store.fsync_dir()

    # -- appending -------------------------------------------------------------------------

    def append(self, record: Record, essential: bool) -> None:
        """Log one record, or raise JournalFull / JournalWriteFailed having logged nothing.

        Batched, the record is only kept (its disk room reserved) until `write_pending`.
        """
        store = self.store
        if store.reserve_released and not essential:
            raise JournalFull("disk full: new items refused until space is freed")
        data = encode_parts(record)
        if store.batching:
            offset = self.size + self.pending_bytes
            length = sum(map(len, data))
            end = offset + length
            if end > self.allocated and not self._reserve_room(end, essential):
                self.append(record, essential)  # fallocate turned out not to work here
                return
            if not self.pending_bytes:
                store.unwritten.append(self)
            if length <= _JOIN_BYTES:
                tail = self.pending_tail
                for part in data:
                    tail += part
            else:
                if self.pending_tail:
                    self.pending.append(self.pending_tail)
                    self.pending_tail = bytearray()
                self.pending += data
            self.pending_bytes += length
        else:
            offset = self.size
            try:
                self._write(data)
            except JournalFull:
                if not essential or not store.release_reserve():
                    raise
                self._write(data)
            self._written()
        self.last_offset = offset
        store.seq += 1
        if self.policy.mode == "always":
            store.always_seq = store.seq
        if self.size + self.pending_bytes - self.base_size >= store.limits.segment_bytes:
            store.segment_full(self.name)

    def _reserve_room(self, end: int, essential: bool) -> bool:
        """Make sure the disk has room up to `end` before a batched record is accepted.

        False if the file system cannot reserve room: batching is then off for good.
        """
        allocate = self.store.allocate_fn
        assert allocate is not None
        start = self.allocated
        while True:
            try:
                try:
                    allocate(self.fd, start, end + _PREALLOCATE_BYTES - start)
                    self.allocated = end + _PREALLOCATE_BYTES
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    allocate(self.fd, start, end - start)  # the last of the disk, exactly
                    self.allocated = end
                return True
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    if essential and self.store.release_reserve():
                        continue
                    raise JournalFull("disk full") from exc
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    logger.warning("fallocate not supported in %s (%s): writing each record at "
                                   "once", self.store.data_dir, exc.strerror)  # fmt: skip
                    self.store.batching = False
                    return False
                raise JournalWriteFailed(f"{self.path()}: {exc.strerror}") from exc

    def write_pending(self) -> None:
        """Write the batched records with one writev (raises JournalError on failure)."""
        if not self.pending_bytes:
            return
        data = self.pending
        if self.pending_tail:
            data.append(self.pending_tail)
        self.pending, self.pending_tail, self.pending_bytes = [], bytearray(), 0
        self._write(data)
        self._written()

    def _written(self) -> None:
        """Records of this journal reached the file: it needs its fsync now."""
        if self.policy.mode == "always":
            self.store.dirty_always.add(self)
        elif self.policy.mode == "periodic":
            self.store.dirty_periodic.add(self)

    def _write(self, parts: Sequence[bytes | bytearray]) -> None:
        start = self.size
        write = self.store.write_fn
        try:
            for first in range(0, len(parts), _IOV_MAX):
                chunk = parts[first : first + _IOV_MAX]
                written = write(self.fd, chunk)
                self.size += written
                if written < sum(map(len, chunk)):  # a short write: go on from where it stopped
                    view = memoryview(b"".join(chunk))[written:]
                    while view:
                        written = write(self.fd, [view])
                        view = view[written:]
                        self.size += written
        except OSError as exc:
            self._cut_back(start)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise JournalFull("disk full") from exc
            raise JournalWriteFailed(f"{self.path()}: {exc.strerror}") from exc

    def _cut_back(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            logger.exception("could not cut %s back to %d bytes", self.path(), size)
        self.size = size

    # -- read-behind (the queue's BehindReader) --------------------------------------------

    def mark(self) -> None:
        self.pointer = (self.current, self.last_offset)

    def seek(self, segment: int, offset: int) -> None:
        self.pointer = (segment, offset)

    def position(self) -> tuple[int, int]:
        return self.pointer

    def read(self, count: int, max_bytes: int) -> list[Item]:
        if self.pending_bytes:
            self.store.write_pending()  # the items wanted may be among them
        items: list[Item] = []
        size = 0
        for record, segment, end in self._scan(*self.pointer):
            if isinstance(record, Add):
                items.append(record.item)
                size += len(record.item.data)
                self.pointer = (segment, end)
                if len(items) >= count or size >= max_bytes:
                    return items
        if len(items) < count:
            problem = f"{count - len(items)} items behind are missing"
            if not self.store.salvage:
                raise JournalCorrupt(str(self.path(self.pointer[0])), self.pointer[1], problem)
            logger.error("journal %s: %s (salvaged damage)", self.name, problem)
        return items

    def _scan(self, segment: int, offset: int) -> Iterator[tuple[Record, int, int]]:
        """Records from (segment, offset) to the end of the journal, with where each ends."""
        for number in self.segments:
            if number < segment:
                continue
            start = offset if number == segment else len(MAGIC)
            for record, end in self.store.records(self.path(number), start, repair=False):
                yield record, number, end

    # -- recovery --------------------------------------------------------------------------

    def replay(self) -> Iterator[Record]:
        """The records of the newest segment; `last_offset` tracks each one for mark()."""
        start = len(MAGIC)
        for record, end in self.store.records(self.path(), start, repair=True):
            self.last_offset = start
            yield record
            start = end
        self.size = self.allocated = os.fstat(self.fd).st_size

    def verify_behind(self) -> None:
        """Check the checksum of every record an item behind will be read from.

        Those records are not replayed at start-up (that is the point of read-behind), but a
        damaged one must stop the start now, not fail a consumer hours later.
        """
        segment, offset = self.pointer
        for number in self.segments[:-1]:
            if number >= segment:
                start = offset if number == segment else len(MAGIC)
                try:
                    self.store.verify(self.path(number), start)
                except JournalCorrupt as exc:
                    if not self.store.salvage:
                        raise
                    logger.error("%s; salvage: items behind it will be skipped", exc)

    # -- segments --------------------------------------------------------------------------

    def should_rotate(self, empty: bool, behind: bool) -> bool:
        limits = self.store.limits
        if self.size - self.base_size >= limits.segment_bytes:
            return True
        if empty and self.size > max(limits.idle_compact_bytes, self.base_size):
            return True
        keep_from = self.pointer[0] if behind else self.current
        return self.segments[0] < keep_from

    def rotate(self, records: Iterable[Record], behind: bool) -> bool:
        """Start a new segment with `records` (a checkpoint); drop segments nothing needs.

        Returns False, keeping the current segment, if the new one could not be written.
        """
        if self.pending_bytes:
            self.store.write_pending()  # the old segment must be whole until the new one is
        number = self.current + 1
        final = self.path(number)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        size = 0
        try:
            chunk = bytearray(MAGIC)
            for record in records:
                chunk += encode(record)
                if len(chunk) >= _WRITE_CHUNK_BYTES:
                    size += _write_all(fd, chunk)
                    chunk.clear()
            size += _write_all(fd, chunk)
            os.fsync(fd)
            os.fsync(self.fd)  # the old segment may still hold items behind
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            logger.warning("new segment for %s failed (%s); keeping the old one", self.name, exc)
            return False
        os.close(fd)
        os.replace(tmp, final)
        self.store.fsync_dir()
        old_total = self.total_size
        self._close_fd()
        self.sizes[self.current] = self.size
        self.fd = os.open(final, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.current = number
        self.segments.append(number)
        self.size = self.base_size = self.allocated = size
        self.rotations += 1
        self.store.dirty_always.discard(self)
        self.store.dirty_periodic.discard(self)
        keep_from = self.pointer[0] if behind else number
        for old in [n for n in self.segments if n < keep_from]:
            self.path(old).unlink(missing_ok=True)
            self.segments.remove(old)
            self.sizes.pop(old, None)
        self.store.fsync_dir()
        logger.info("journal %s: segment %d, %d -> %d bytes on disk",
                    self.name, number, old_total, self.total_size)  # fmt: skip
        return True

    def delete(self) -> None:
        # The queue is gone: so are its unwritten records.
        self.pending, self.pending_tail, self.pending_bytes = [], bytearray(), 0
        self._close_fd()
        for number in self.segments:
            self.path(number).unlink(missing_ok=True)

    def close(self) -> None:
        if self.pending_bytes:
            self.store.write_pending()
        self._close_fd()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            if self.allocated > self.size:
                # Give back the room reserved past the end (truncating to the same size
                # frees blocks beyond it).
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, self.size)
            os.close(self.fd)
            self.fd = -1


def _raise(exc: JournalError) -> None:
    raise exc


def _write_all(fd: int, data: bytes | bytearray) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


class JournalStore:
    """All journals of a data directory (the `Storage` of a QueueCollection)."""

    def __init__(
        self,
        data_dir: str | Path,
        policy_for: Callable[[str], FsyncPolicy],
        limits: StoreLimits = StoreLimits(),
        salvage: bool = False,
        write_fn: Callable[[int, Sequence[bytes | bytearray | memoryview]], int] = os.writev,
        batch_writes: bool = False,
        allocate_fn: Callable[[int, int, int], None] | None = fallocate_keep_size,
    ) -> None:
        self.data_dir = Path(data_dir)
        # The seams for failing appends (ENOSPC, EIO) in tests.
        self.write_fn = write_fn
        self.allocate_fn = allocate_fn
        self.batching = batch_writes and allocate_fn is not None
        self.unwritten: list[Journal] = []
        # Called when batched records could not be written; must not return (see above).
        self.on_write_lost: Callable[[JournalError], None] = _raise
        self.policy_for = policy_for
        self.limits = limits
        self.salvage = salvage
        self.journals: dict[str, Journal] = {}
        self.seq = 0  # records appended
        self.always_seq = 0  # the last of them to an `always` journal
        self.written_seq = 0  # records written to their files (an fsync covers these)
        self.synced_seq = 0
        self.fsyncs = 0
        self.dirty_always: set[Journal] = set()
        self.dirty_periodic: set[Journal] = set()
        self.reserve_released = False
        self.needs_rotation: set[str] = set()
        self._found: dict[str, list[int]] = {}
        # Called when a journal has grown by segment_bytes; the server starts a new segment
        # as soon as the command that filled it is done (a checkpoint needs the new state).
        self.segment_full: Callable[[str], None] = lambda name: None
        self._lock_fd = -1
        self._dir_fd = -1

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create and lock the data directory, remove stale temp files, set the reserve."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalError(f"{self.data_dir} is in use by another kestrelq server") from None
        self._dir_fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for tmp in self.data_dir.glob(f"*{SUFFIX}.tmp"):
            tmp.unlink()
        self._found = self._scan_dir()
        self.ensure_reserve()

    def close(self) -> None:
        self.sync_all()
        for journal in self.journals.values():
            journal.close()
        self.journals.clear()
        for fd in (self._dir_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._dir_fd = self._lock_fd = -1

    def existing_names(self) -> list[str]:
        return sorted(self._found)

    def _scan_dir(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for path in self.data_dir.iterdir():
            parsed = parse_segment_name(path.name)
            if parsed is not None:
                found.setdefault(parsed[0], []).append(parsed[1])
        return found

    # -- Storage protocol ----------------------------------------------------------------------

    def journal(self, name: str) -> Journal:
        journal = self.journals.get(name)
        if journal is None:
            segments = self._found.get(name, [])
            try:
                journal = Journal(self, name, self.policy_for(name), segments)
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
            self.dirty_always.discard(journal)
            self.dirty_periodic.discard(journal)
            if journal in self.unwritten:
                self.unwritten.remove(journal)
            journal.delete()
        self.fsync_dir()

    def set_policies(self) -> None:
        for name, journal in self.journals.items():
            journal.policy = self.policy_for(name)

    # -- reading -------------------------------------------------------------------------------

    def recover(self, name: str) -> Iterator[Record]:
        """The records of a queue's newest segment, repairing a torn tail."""
        return self.journal(name).replay()

    def records(self, path: Path, start: int, repair: bool) -> Iterator[tuple[Record, int]]:
        """(record, end offset) from `start` to the end of one segment file.

        With `repair`, a torn tail is cut off the file (the newest segment after a crash);
        without, it is damage like any other.
        """
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= len(MAGIC) and repair:
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    if view[: len(MAGIC)] != MAGIC:
                        raise JournalCorrupt(str(path), 0, "not a kestrelq journal")
                    yield from self._records(path, mapped, view, start, size, repair)
                finally:
                    view.release()

    def verify(self, path: Path, start: int) -> None:
        """Check lengths and checksums from `start` to the end of a segment, fast."""
        max_len = self.limits.max_record_bytes
        header = HEADER
        crc32 = zlib.crc32
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            released = 0
            try:
                size = len(view)
                offset = start
                while offset < size:
                    released = _release(mapped, released, offset)
                    if offset + header.size > size:
                        raise JournalCorrupt(str(path), offset, "record cut short")
                    length, crc = header.unpack_from(view, offset)
                    body_start = offset + header.size
                    end = body_start + length
                    if not 0 < length <= max_len or end > size:
                        raise JournalCorrupt(str(path), offset, f"impossible length {length}")
                    if crc32(view[body_start:end]) != crc:
                        raise JournalCorrupt(str(path), offset, "checksum mismatch")
                    offset = end
            finally:
                view.release()

    def _records(
        self, path: Path, mapped: mmap.mmap, view: memoryview, offset: int, size: int, repair: bool
    ) -> Iterator[tuple[Record, int]]:
        max_len = self.limits.max_record_bytes
        released = 0
        while offset < size:
            released = _release(mapped, released, offset)
            try:
                decoded = decode(view, offset, max_len)
                problem = "record cut short"
            except BadRecord as exc:
                decoded = None
                problem = str(exc)
            if decoded is not None:
                record, offset = decoded
                yield record, offset
                continue
            resume = _next_valid(view, offset + 1, max_len)
            if resume is None and repair:
                logger.warning(
                    "%s: torn tail at offset %d (%s): cutting off %d bytes; "
                    "DATA WRITTEN AFTER THE LAST FSYNC MAY HAVE BEEN LOST",
                    path, offset, problem, size - offset,
                )  # fmt: skip
                os.truncate(path, offset)
                return
            if not self.salvage:
                raise JournalCorrupt(str(path), offset, problem)
            logger.error(
                "%s: damaged record at offset %d (%s): salvage skips %d bytes",
                path, offset, problem, (resume or size) - offset,
            )  # fmt: skip
            parsed = parse_segment_name(path.name)
            if parsed is not None:
                self.needs_rotation.add(parsed[0])
            if resume is None:
                return
            offset = resume

    # -- batched writes and durability ---------------------------------------------------------

    def write_pending(self) -> None:
        """Write every journal's batched records; before any reply that depends on them."""
        unwritten, self.unwritten = self.unwritten, []
        try:
            for journal in unwritten:
                journal.write_pending()
        except JournalError as exc:
            self.on_write_lost(exc)
            raise
        self.written_seq = self.seq

    def take_dirty(self, periodic: bool = False) -> tuple[list[int], int]:
        """Duplicated fds of files that need an fsync, and the seq the fsync will cover.

        Only written records count: batched ones still pending are covered by a later fsync.
        """
        covered = self._written_upto()
        dirty = self.dirty_periodic if periodic else self.dirty_always
        fds = []
        for journal in dirty:
            if journal.fd < 0:
                continue
            try:
                # A duplicate, so a segment switch closing the fd meanwhile cannot make the
                # worker thread fsync some other file.
                fds.append(os.dup(journal.fd))
            except OSError:
                # No descriptor to spare (EMFILE): fsync right here, in the loop thread.
                os.fsync(journal.fd)
        dirty.clear()
        return fds, covered

    def sync_always(self) -> None:
        """fdatasync every `always` file with written records, here; advance synced_seq.

        (fdatasync: an append's new size is flushed with the data; the timestamps need not.)
        """
        covered = self._written_upto()
        if self.dirty_always:
            for journal in self.dirty_always:
                if journal.fd >= 0:
                    os.fdatasync(journal.fd)
            self.fsyncs += 1  # rounds, as for periodic syncs
        self.dirty_always.clear()
        self.synced_seq = max(self.synced_seq, covered)

    def _written_upto(self) -> int:
        """The seq an fsync started now covers: every append, unless some are still batched."""
        if not self.unwritten:
            self.written_seq = self.seq
        return self.written_seq

    def fsync_fds(self, fds: list[int]) -> None:
        """fdatasync (in a worker thread: periodic syncs) and close the duplicated fds."""
        try:
            for fd in fds:
                os.fdatasync(fd)
        finally:
            for fd in fds:
                os.close(fd)

    def sync_all(self) -> None:
        if self.unwritten:
            self.write_pending()
        fds, seq = self.take_dirty()
        more, _ = self.take_dirty(periodic=True)
        self.fsync_fds(fds + more)
        self.fsyncs += 1
        self.synced_seq = max(self.synced_seq, seq)

    def fsync_dir(self) -> None:
        if self._dir_fd >= 0:
            os.fsync(self._dir_fd)

    # -- disk-full reserve ----------------------------------------------------------------

    @property
    def _reserve_path(self) -> Path:
        return self.data_dir / ".reserve"

    def ensure_reserve(self) -> bool:
        """Set aside the reserve if it is missing; True when it is in place."""
        size = self.limits.reserve_bytes
        path = self._reserve_path
        if size <= 0:
            self.reserve_released = False
            return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)
            if not self.reserve_released:
                logger.error("cannot set aside the %d-byte disk reserve: %s", size, exc)
            self.reserve_released = True
            return False
        if self.reserve_released:
            logger.warning("disk space available again: accepting new items")
        self.reserve_released = False
        return True

    def release_reserve(self) -> bool:
        """Free the reserve so that reads can still be journalled; False if already gone."""
        path = self._reserve_path
        if not path.exists():
            self.reserve_released = True
            return False
        path.unlink()
        self.reserve_released = True
        logger.error("disk full: released the disk reserve; refusing new items, serving reads")
        return True


def _release(mapped: mmap.mmap, released: int, offset: int) -> int:
    """Drop the mapped pages before `offset` once 8 MiB have been read past the last drop.

    What was read is checked, or decoded into records that own copies of their data, so a
    server scanning gigabytes of journal at start-up does not hold them in resident memory.
    Returns the new release point.
    """
    if offset - released < _RELEASE_BYTES:
        return released
    upto = offset - offset % mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, released, upto - released)
    return upto


def _next_valid(view: memoryview, start: int, max_len: int) -> int | None:
    """Offset of the first decodable record at or after `start`, None if there is none."""
    size = len(view)
    # A tail of zeros (a file extended but never written, as after a crash) holds nothing.
    if not bytes(view[start:]).strip(b"\0"):
        return None
    for offset in range(start, size - RECORD_OVERHEAD + 1):
        try:
            if decode(view, offset, max_len) is not None:
                return offset
        except BadRecord:
            continue
    return None
