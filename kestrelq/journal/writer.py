"""Writing one queue's journal: appends, batching, room reserved ahead, cut-back, new segments.

Theory of operation
-------------------
A queue's journal is a series of segment files, `<data_dir>/<queue>.<n>.kqj`; appends go to
the newest. The journal is the truth and memory a cache, so a record is in the file before the
command that caused it is answered. Three rules keep the file something a reader can trust:

1. A failed write is cut back off the file with `ftruncate`, so the file never holds half a
   record that a later append would bury in the middle (where it would be damage, not a torn
   tail).
2. Batched writes (the server's default) keep a record in memory until the store's
   `write_pending`, which the server calls before it sends the replies that depend on it: a
   pipelined batch of commands then costs one `writev` per queue. A full disk must still be
   found *before* a command changes anything, so `append` first reserves room past the end of
   the file with fallocate(KEEP_SIZE): 4 KiB the first time, twice as much each next time, up
   to a megabyte, so a busy queue makes one call per megabyte while a queue written once holds
   a few KiB; the room is given back when the queue goes idle and its file is closed. The room
   is then written with zeros, so the file's size and its block map already cover the records
   to come: an append overwrites zeros in place, and the fdatasync that follows flushes the
   data alone, not the inode too (cheaper for every `always` reply). The file is therefore
   written at the journal's end (`size`), not appended to, and a crash leaves zeros after the
   last record, which the reader takes for the clean end they are. A write
   that fails after its commands were applied leaves memory ahead of the journal; the store's
   `on_write_lost` (the server: exit at once, restart from the journal) is the only safe
   answer. Where the file system cannot fallocate, batching is switched off and each record is
   written at once.
3. A new segment starts with a checkpoint (the queue's state as records, see `format`),
   written to a temp file, fsynced, renamed into place and made durable by a directory fsync
   before the old segment is closed; old segments are unlinked only after that, and only when
   no item behind (read-behind) still points into them. At every instant the directory names
   a whole newest segment.

Everything shared between the journals of a store (the file operations, the sequence ledger,
the disk reserve, the reader, the store's callbacks) comes in one `JournalContext`; a journal
changes only its own fields and tells the others through their methods.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kestrelq.errors import JournalError, JournalFull, JournalWriteFailed
from kestrelq.journal.cursor import BehindCursor
from kestrelq.journal.files import Files
from kestrelq.journal.format import MAGIC, Record, encode, encode_parts
from kestrelq.journal.item import Item
from kestrelq.journal.ledger import Ledger
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.reader import SegmentReader
from kestrelq.journal.reserve import DiskReserve

logger = logging.getLogger(__name__)

SUFFIX = ".kqj"
_WRITE_CHUNK_BYTES = 1 << 20
# Room reserved ahead of a batched journal's end: a queue's first fallocate reserves
# _FIRST_AHEAD_BYTES, and each next one twice the last, up to _MAX_AHEAD_BYTES. A busy queue
# soon makes one call per megabyte; a queue written once holds a few KiB, not a megabyte.
_FIRST_AHEAD_BYTES = 4 << 10
_MAX_AHEAD_BYTES = 1 << 20
# A journal not appended to for this many of the store's ticks is idle: its file is closed and
# the room reserved ahead given back.
IDLE_TICKS = 4
# After a new segment could not be written (a full disk), this many `should_rotate` checks
# (the server makes one per tick, 4 a second) say no before it is tried again.
ROTATE_RETRY_CHECKS = 40
# Batched records up to this size are joined into one buffer.
_JOIN_BYTES = 16 << 10


# writev takes at most this many buffers (EINVAL past it).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


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


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_record_bytes: int = (64 << 20) + 64
    reserve_bytes: int = 8 << 20
    segment_bytes: int = 64 << 20  # start a new segment after this much growth
    idle_compact_bytes: int = 64 << 10  # an empty queue's segment is rewritten past this
    # Journal files open at once; past it the least recently written are closed. 0: no cap
    # but the process's descriptor limit. The server sets it so that connections keep room.
    max_open_files: int = 0


class Batching:
    """Whether appends are batched; switched off for good where fallocate is not supported."""

    __slots__ = ("enabled",)

    def __init__(self, enabled: bool) -> None:
        # Read on every append: a plain attribute, not a property. Only `unsupported` sets it.
        self.enabled = enabled

    def unsupported(self, data_dir: Path, why: str) -> None:
        if self.enabled:
            logger.warning("fallocate not supported in %s (%s): writing each record at once",
                           data_dir, why)  # fmt: skip
        self.enabled = False


@dataclass(frozen=True, slots=True)
class JournalContext:
    """What the journals of one store share (built by the store)."""

    data_dir: Path
    files: Files
    ledger: Ledger
    reserve: DiskReserve
    reader: SegmentReader
    limits: StoreLimits
    batching: Batching
    salvage: bool
    # The journal holds batched records now (it was empty): the store lists it for writing.
    on_pending: Callable[[Journal], None]
    # Write every journal's batched records (reports a failure as lost; see rule 2).
    write_pending: Callable[[], None]
    # The journal has grown by segment_bytes: the server starts a new segment as soon as the
    # command that filled it is done (a checkpoint needs the new state).
    on_segment_full: Callable[[str], None]
    # The journal opened its file (it is now one to close when idle) or closed it.
    on_opened: Callable[[Journal], None]
    on_closed: Callable[[Journal], None]
    # Out of descriptors: close the files of idle journals; True if any was closed.
    on_no_descriptor: Callable[[], bool]
    # fsync the data directory (after a create, rename or unlink in it).
    fsync_dir: Callable[[], None]


class Journal:
    """The journal of one queue: its segment files, appends, checkpoints, read-behind."""

    def __init__(
        self, ctx: JournalContext, name: str, policy: FsyncPolicy, segments: list[int]
    ) -> None:
        self._ctx = ctx
        self.name = name
        self.policy = policy
        self._always = policy.mode == "always"  # asked on every append
        self.segments = sorted(segments) or [1]
        self.sizes: dict[int, int] = {}
        self.current = self.segments[-1]
        self.fd = -1
        self.size = 0
        self.base_size = 0
        self.last_offset = 0
        self.rotations = 0
        # Batched records not yet written, and how far past `size` the disk room is reserved.
        # Small records are joined in `pending_tail` (one copy is cheaper than an iovec each);
        # big ones stay separate buffers, so an item's data is never copied.
        self.pending: list[bytes | bytearray] = []
        self.pending_tail = bytearray()
        self.pending_bytes = 0
        self.allocated = 0
        self._ahead = _FIRST_AHEAD_BYTES
        self._idle_ticks = 0
        self._rotate_failures = 0  # in a row
        self._rotate_retry_in = 0
        self.cursor = BehindCursor(
            name,
            ctx.reader,
            self._segment_numbers,
            self.path,
            ctx.write_pending,
            ctx.salvage,
            (self.current, len(MAGIC)),
        )
        # Whether the current segment is a file yet: a queue's first segment is created by
        # its first write, so a queue that is only read costs no file and no descriptor.
        self.on_disk = bool(segments)
        # The file is new (or was cut inside its header): the magic goes out with the next
        # write, in the same writev as its first record.
        self._header_due = not self.on_disk
        files = ctx.files
        for number in self.segments[:-1]:
            self.sizes[number] = files.file_size(self.path(number))
        if self.on_disk:
            self.size = self.base_size = self.allocated = files.file_size(self.path())

    def path(self, number: int | None = None) -> Path:
        return self._ctx.data_dir / segment_name(
            self.name, self.current if number is None else number
        )

    def _segment_numbers(self) -> list[int]:
        return list(self.segments)

    @property
    def total_size(self) -> int:
        return sum(self.sizes.get(n, 0) for n in self.segments[:-1]) + self.size

    def set_policy(self, policy: FsyncPolicy) -> None:
        self.policy = policy
        self._always = policy.mode == "always"

    def _ensure_open(self, essential: bool) -> None:
        """Open the current segment for appending, creating it if it is not there yet."""
        if self.fd >= 0:
            return
        ctx = self._ctx
        files = ctx.files
        while True:
            try:
                self.fd = files.open_append(self.path())
                break
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    if essential and ctx.reserve.release():
                        continue
                    raise JournalFull("disk full") from exc
                if exc.errno in (errno.EMFILE, errno.ENFILE) and ctx.on_no_descriptor():
                    continue
                # Out of file descriptors or the like: refuse this command, keep serving.
                raise JournalWriteFailed(
                    f"cannot open the journal of {self.name}: {exc.strerror}"
                ) from exc
        ctx.on_opened(self)
        size = self.allocated = files.size(self.fd)
        if self.on_disk and size > self.size:
            # Zeros written ahead and not given back at the last close (its ftruncate failed):
            # the journal's end is where its records end, and the zeros are room already.
            size = self.size
        if size < len(MAGIC):
            # New, or cut inside its header by a crash: start it cleanly. The new name must
            # survive a crash before any record in the file is acknowledged: the ledger's next
            # fsync round syncs the directory too.
            if size:
                files.ftruncate(self.fd, 0)
            self.size = self.base_size = self.allocated = 0
            self._header_due = True
            if not self.on_disk:
                ctx.ledger.file_created()
        else:
            self.size = size
        files.seek(self.fd, self.size)
        self.on_disk = True

    def _forget_empty_file(self) -> None:
        """A write to a file just created failed: remove it, so no empty journal is left.

        (An empty file is what a crash between create and first write leaves; at start-up it
        is reported as a journal whose records may be lost. This one never had any.)
        """
        if self.size or self.pending_bytes or self.fd < 0:
            return
        files = self._ctx.files
        files.close(self.fd)
        self.fd = -1
        files.unlink(self.path())
        self.on_disk = False
        self._header_due = True
        self._ctx.fsync_dir()

    # -- appending -------------------------------------------------------------------------

    def append(self, record: Record, essential: bool) -> None:
        """Log one record, or raise JournalFull / JournalWriteFailed having logged nothing.

        Batched, the record is only kept (its disk room reserved) until `write_pending`.
        """
        ctx = self._ctx
        if ctx.reserve.released and not essential:
            raise JournalFull("disk full: new items refused until space is freed")
        data = encode_parts(record)
        if self.fd < 0:
            self._ensure_open(essential)
        if self._header_due:
            data = (MAGIC, *data)
        try:
            if ctx.batching.enabled:
                offset = self.size + self.pending_bytes
                if not self._batch(data, offset, essential):
                    self.append(record, essential)  # fallocate turned out not to work here
                    return
            else:
                offset = self.size
                length = sum(map(len, data))
                try:
                    self._write(data, length)
                except JournalFull:
                    if not essential or not ctx.reserve.release():
                        raise
                    self._write(data, length)
                self._written()
        except JournalError:
            self._forget_empty_file()
            raise
        if self._header_due:
            self._header_due = False
            offset += len(MAGIC)
        self.last_offset = offset
        self._idle_ticks = 0
        # Only an `always` journal's appends can make a reply wait (its policy says which).
        ctx.ledger.appended(self._always and self.policy.waits_for(record))
        if self.size + self.pending_bytes - self.base_size >= ctx.limits.segment_bytes:
            ctx.on_segment_full(self.name)

    def _batch(self, data: tuple[bytes, ...], offset: int, essential: bool) -> bool:
        """Keep a record for `write_pending`, its room reserved; False if it cannot be."""
        length = sum(map(len, data))
        end = offset + length
        if end > self.allocated and not self._reserve_room(end, essential):
            return False
        if not self.pending_bytes:
            self._ctx.on_pending(self)
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
        return True

    def _reserve_room(self, end: int, essential: bool) -> bool:
        """Make sure the disk has room up to `end` before a batched record is accepted.

        False if the file system cannot reserve room: batching is then off for good.
        """
        ctx = self._ctx
        start = self.allocated
        while True:
            try:
                try:
                    ahead = self._ahead
                    ctx.files.fallocate(self.fd, start, end + ahead - start)
                    room_end = end + ahead
                    self._ahead = min(ahead * 2, _MAX_AHEAD_BYTES)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    ctx.files.fallocate(self.fd, start, end - start)  # the last of the disk
                    room_end = end
                # Into blocks just reserved: no ENOSPC. See rule 2 for why zeros.
                ctx.files.zero_fill(self.fd, start, room_end - start)
                self.allocated = room_end
                return True
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    if essential and ctx.reserve.release():
                        continue
                    raise JournalFull("disk full") from exc
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    ctx.batching.unsupported(ctx.data_dir, exc.strerror or str(exc))
                    return False
                raise JournalWriteFailed(f"{self.path()}: {exc.strerror}") from exc

    def write_pending(self) -> None:
        """Write the batched records with one writev (raises JournalError on failure)."""
        length = self.pending_bytes
        if not length:
            return
        if self.fd < 0:
            self._ensure_open(True)
        data = self.pending
        if self.pending_tail:
            data.append(self.pending_tail)
        self.pending, self.pending_tail, self.pending_bytes = [], bytearray(), 0
        self._write(data, length)
        self._written()

    def _written(self) -> None:
        """Records of this journal reached the file: it needs its fsync now."""
        self._ctx.ledger.written(self, self.policy.mode)

    def _write(self, parts: Sequence[bytes | bytearray], length: int) -> None:
        """Write `parts` (`length` bytes in all) at the end of the file."""
        start = self.size
        try:
            written = 0
            if len(parts) <= _IOV_MAX:  # the usual case: one writev takes it all
                written = self._ctx.files.writev(self.fd, parts)
                self.size += written
            if written < length:
                self._write_rest(parts, written)
        except OSError as exc:
            self._cut_back(start)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise JournalFull("disk full") from exc
            raise JournalWriteFailed(f"{self.path()}: {exc.strerror}") from exc

    def _write_rest(self, parts: Sequence[bytes | bytearray | memoryview], done: int) -> None:
        """What one writev did not take: more parts than IOV_MAX, or after a short write."""
        files = self._ctx.files
        if done:
            parts = [memoryview(b"".join(parts))[done:]]
        for first in range(0, len(parts), _IOV_MAX):
            chunk = parts[first : first + _IOV_MAX]
            written = files.writev(self.fd, chunk)
            self.size += written
            if written < sum(map(len, chunk)):  # a short write: go on from where it stopped
                view = memoryview(b"".join(chunk))[written:]
                while view:
                    written = files.writev(self.fd, [view])
                    view = view[written:]
                    self.size += written

    def _cut_back(self, size: int) -> None:
        files = self._ctx.files
        try:
            files.ftruncate(self.fd, size)
        except OSError:
            logger.exception("could not cut %s back to %d bytes", self.path(), size)
        with contextlib.suppress(OSError):
            files.seek(self.fd, size)  # the next record overwrites whatever is left
        self.size = size
        self.allocated = min(self.allocated, size)  # truncating gave the room back

    # -- read-behind (the queue's BehindReader) --------------------------------------------

    def mark(self) -> None:
        self.cursor.seek(self.current, self.last_offset)

    def seek(self, segment: int, offset: int) -> None:
        self.cursor.seek(segment, offset)

    def position(self) -> tuple[int, int]:
        return self.cursor.position()

    def read(self, count: int, max_bytes: int) -> list[Item]:
        return self.cursor.read(count, max_bytes)

    def verify_behind(self) -> None:
        self.cursor.verify()

    # -- recovery --------------------------------------------------------------------------

    def replay(self) -> Iterator[Record]:
        """The records of the newest segment; `last_offset` tracks each one for mark()."""
        start = len(MAGIC)
        for record, end in self._ctx.reader.records(self.path(), start, repair=True):
            self.last_offset = start
            yield record
            start = end
        # The reader may have cut a torn tail, or the zeros written ahead, off, or the whole
        # file where its header never reached the disk: then the header goes out again with
        # the next record, at offset 0.
        self.size = self.allocated = self._ctx.files.file_size(self.path())
        self.base_size = min(self.base_size, self.size)
        if self.size < len(MAGIC):
            self.size = self.base_size = self.allocated = 0
            self._header_due = True

    # -- segments --------------------------------------------------------------------------

    def should_rotate(self, empty: bool, behind: bool) -> bool:
        if self._rotate_retry_in:
            self._rotate_retry_in -= 1  # the last try failed: not every tick, not every log
            return False
        limits = self._ctx.limits
        if self.size - self.base_size >= limits.segment_bytes:
            return True
        if empty and self.size > max(limits.idle_compact_bytes, self.base_size):
            return True
        keep_from = self.position()[0] if behind else self.current
        return self.segments[0] < keep_from

    def rotate(self, records: Iterable[Record], behind: bool) -> bool:
        """Start a new segment with `records` (a checkpoint); drop segments nothing needs.

        Returns False, keeping the current segment, if the new one could not be written.
        """
        ctx = self._ctx
        files = ctx.files
        if self.pending_bytes:
            ctx.write_pending()  # the old segment must be whole until the new one is
        number = self.current + 1
        final = self.path(number)
        tmp = final.with_name(final.name + ".tmp")
        size = 0
        try:
            fd = files.open_new(tmp)
        except OSError as exc:
            return self._rotate_failed(exc)
        try:
            chunk = bytearray(MAGIC)
            for record in records:
                chunk += encode(record)
                if len(chunk) >= _WRITE_CHUNK_BYTES:
                    size += self._write_all(fd, chunk)
                    chunk.clear()
            size += self._write_all(fd, chunk)
            files.fsync(fd)
            if self.fd >= 0:
                # The old segment may still hold items behind. Through the ledger: if this
                # fails, a later fsync of the same file proves nothing (fsyncgate).
                ctx.ledger.fsync(self.fd)
        except OSError as exc:
            files.close(fd)
            files.unlink(tmp)
            return self._rotate_failed(exc)
        files.close(fd)
        files.rename(tmp, final)
        # From here on the directory names the new segment newest, and recovery replays it
        # alone: the journal switches to it whatever fails next (the directory's fsync, the
        # open), or later appends would go to a segment no restart reads.
        old_total = self.total_size
        try:
            ctx.fsync_dir()
        finally:
            self._switch_to(number, size)
        keep_from = self.position()[0] if behind else number
        for old in [n for n in self.segments if n < keep_from]:
            files.unlink(self.path(old))
            self.segments.remove(old)
            self.sizes.pop(old, None)
        ctx.fsync_dir()
        logger.info("journal %s: segment %d, %d -> %d bytes on disk",
                    self.name, number, old_total, self.total_size)  # fmt: skip
        if self._rotate_failures:
            logger.warning("journal %s: new segment written after %d failed tries",
                           self.name, self._rotate_failures)  # fmt: skip
            self._rotate_failures = 0
        return True

    def _switch_to(self, number: int, size: int) -> None:
        """Append to segment `number` (just renamed into place, `size` bytes) from now on."""
        ctx = self._ctx
        self._close_fd()
        self.sizes[self.current] = self.size
        self.current = number
        self.segments.append(number)
        self.size = self.base_size = self.allocated = size
        self.on_disk = True
        self._header_due = False
        self.rotations += 1
        ctx.ledger.forget(self)
        while True:
            try:
                self.fd = ctx.files.open_append(self.path(), create=False)
                ctx.files.seek(self.fd, size)
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and ctx.on_no_descriptor():
                    continue
                # Out of descriptors all the same: the file stays closed, and the next append
                # opens it (or refuses its command) as after an idle close.
                logger.warning("journal %s: could not open segment %d (%s); opening it at "
                               "the next write", self.name, number, exc)  # fmt: skip
                return
        ctx.on_opened(self)

    def _rotate_failed(self, exc: OSError) -> bool:
        if not self._rotate_failures:
            logger.warning("new segment for %s failed (%s); keeping the old one, retrying "
                           "every %d ticks", self.name, exc, ROTATE_RETRY_CHECKS)  # fmt: skip
        self._rotate_failures += 1
        self._rotate_retry_in = ROTATE_RETRY_CHECKS
        return False

    def _write_all(self, fd: int, data: bytes | bytearray) -> int:
        view = memoryview(data)
        while view:
            # The call stays out of the slice: mypyc evaluates a call inside a slice's bounds
            # twice, which wrote the chunk twice when this module was compiled.
            written = self._ctx.files.write(fd, view)
            view = view[written:]
        return len(data)

    def delete(self) -> None:
        # The queue is gone: so are its unwritten records.
        self.pending, self.pending_tail, self.pending_bytes = [], bytearray(), 0
        self._close_fd()
        for number in self.segments:
            self._ctx.files.unlink(self.path(number))

    def close(self) -> None:
        if self.pending_bytes:
            self._ctx.write_pending()
        self._close_fd()

    @property
    def idle_ticks(self) -> int:
        """Store ticks since the last append: the larger, the better a file to close."""
        return self._idle_ticks

    def idle_tick(self) -> None:
        """One of the store's ticks passed: close the file once the journal is idle."""
        self._idle_ticks += 1
        if self._idle_ticks >= IDLE_TICKS:
            self.close_if_clean()

    def close_if_clean(self) -> bool:
        """Close the file, giving back the room reserved ahead, unless records still need it
        (batched and unwritten, or written and waiting for their fsync). True if closed."""
        if self.fd < 0 or self.pending_bytes or self._ctx.ledger.is_dirty(self):
            return False
        self._close_fd()
        return True

    def _close_fd(self) -> None:
        if self.fd >= 0:
            files = self._ctx.files
            if self.allocated > self.size:
                # Give back the room reserved past the end (truncating to the same size
                # frees blocks beyond it).
                with contextlib.suppress(OSError):
                    files.ftruncate(self.fd, self.size)
            files.close(self.fd)
            self.fd = -1
            self.allocated = self.size
            self._ahead = _FIRST_AHEAD_BYTES
            self._ctx.ledger.forget(self)
            self._ctx.on_closed(self)
