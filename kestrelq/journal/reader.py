"""Reading segment files back: records for replay, a fast verify, salvage of damage.

Theory of operation
-------------------
A reader has to tell three endings of a file apart, because each asks for a different answer:

- a clean end: every record whole, then the end of the file or zeros to it (the writer
  writes zeros ahead of its records, see its rule 2: a crash leaves them; in the newest
  segment they are cut off at start-up, quietly);
- a torn tail: the last record cut short by the end of the file, the normal trace of a crash
  in the middle of an append, or cut short by zeros from a sector boundary inside it to the
  end of the file (its first sectors reached the disk, the others did not, over the zeros
  written ahead). In the newest segment it is cut off with a warning; nothing acknowledged
  under `fsync always` can be in it, since a reply waits for the fsync that makes the record
  whole;
- damage: bytes that cannot be a record with valid records after them, or anywhere in a
  segment read only for items behind. That is corruption: JournalCorrupt names the file and
  the offset, and the server refuses to start unless told to salvage, which skips the damaged
  bytes to the next record that decodes and tells the store (`on_salvaged`) that the queue
  needs a fresh segment, so that the damage is no longer needed.

The framing itself (length, checksum) is checked only in `format.record_end`; this module
decides what a failed check means here. Files are mapped, not read, and the pages already
decoded are dropped as the reader goes, so a start-up scanning gigabytes of journal does not
hold them in resident memory (decoded records own copies of their data).
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from kestrelq.errors import JournalCorrupt
from kestrelq.journal.files import Files
from kestrelq.journal.format import HEADER, MAGIC, RECORD_OVERHEAD, Record, decode, record_end

logger = logging.getLogger(__name__)

_RELEASE_BYTES = 8 << 20
# What a disk writes whole: a torn write is cut at a multiple of this.
_SECTOR_BYTES = 512
LENGTH = struct.Struct("<I")


class SegmentReader:
    """Reads the segment files of a data directory (one per store, shared by its journals)."""

    def __init__(
        self,
        files: Files,
        max_record_bytes: int,
        salvage: bool,
        on_salvaged: Callable[[Path], None],
    ) -> None:
        self._files = files
        self._max_len = max_record_bytes
        self._salvage = salvage
        self._on_salvaged = on_salvaged

    def records(self, path: Path, start: int, repair: bool) -> Iterator[tuple[Record, int]]:
        """(record, end offset) from `start` to the end of one segment file.

        With `repair` (the newest segment, at start-up), a torn tail is cut off the file and a
        file cut inside its header is reported and read as empty; without, both are damage.
        """
        with self._files.mapped(path) as view:
            size = len(view)
            if view[: len(MAGIC)] != MAGIC and _header_never_written(view):
                if not repair:
                    raise JournalCorrupt(
                        str(path), 0, f"no whole file header ({size} bytes)",
                        drops="this segment and the items behind in it",
                    )  # fmt: skip
                logger.error(
                    "%s: %d bytes and no whole %d-byte file header (cut inside it, or zeros "
                    "where it should be): no record can be read. Whatever was written to it "
                    "and not fsynced is LOST (fsync never or periodic and a power cut, or a "
                    "crash while the file was being created); the queue starts without it, and "
                    "the file is cut to nothing and rewritten from its start by its first write",
                    path, size, len(MAGIC),
                )  # fmt: skip
                if size:
                    # Cut here, not left to the writer: a journal's end is its file's size
                    # after recovery, and a record written behind these zeros, with no header
                    # in front, would make the next start refuse the whole file.
                    self._files.truncate(path, 0)
                return
            if view[: len(MAGIC)] != MAGIC:
                yield from self._bad_header(path, view, max(start, len(MAGIC)), repair)
                return
            yield from self._records(path, view, start, repair)

    def verify(self, path: Path, start: int) -> None:
        """Check lengths and checksums from `start` to the end of a segment, without decoding."""
        max_len = self._max_len
        with self._files.mapped(path) as view:
            if view[: len(MAGIC)] != MAGIC:
                resume = _next_valid(view, len(MAGIC), max_len)
                raise JournalCorrupt(str(path), 0, _BAD_HEADER, _drops(view, 0, resume))
            released = 0
            offset = start
            size = len(view)
            while offset < size:
                released = _release(view, released, offset)
                if _zeros_from(view, offset):
                    return  # the room written ahead of the records: the clean end
                try:
                    end = record_end(view, offset, max_len)
                except JournalCorrupt as exc:
                    resume = _next_valid(view, offset + 1, max_len)
                    raise exc.in_file(str(path), _drops(view, offset, resume)) from None
                if end is None:
                    raise JournalCorrupt(
                        str(path), offset, "record cut short", _drops(view, offset, None)
                    )
                offset = end

    def _bad_header(
        self, path: Path, view: memoryview, start: int, repair: bool
    ) -> Iterator[tuple[Record, int]]:
        """A file that does not start with the magic: damage, salvaged like any other."""
        resume = _next_valid(view, len(MAGIC), self._max_len)
        drops = _drops(view, 0, resume)
        if not self._salvage:
            raise JournalCorrupt(str(path), 0, _BAD_HEADER, drops)
        logger.error("%s: %s: salvage drops %s", path, _BAD_HEADER, drops)
        self._on_salvaged(path)
        if resume is not None:
            yield from self._records(path, view, max(start, resume), repair)

    def _records(
        self, path: Path, view: memoryview, offset: int, repair: bool
    ) -> Iterator[tuple[Record, int]]:
        max_len = self._max_len
        size = len(view)
        released = 0
        while offset < size:
            released = _release(view, released, offset)
            try:
                decoded = decode(view, offset, max_len)
                problem = "record cut short by the end of the file"
            except JournalCorrupt as exc:
                decoded = None
                problem = exc.detail
            if decoded is not None:
                record, offset = decoded
                yield record, offset
                continue
            if _zeros_from(view, offset):
                # The room written ahead of the records (see the module): the clean end.
                if repair:
                    logger.debug("%s: %d zero bytes after the last record at %d: cut off",
                                 path, size - offset, offset)  # fmt: skip
                    self._files.truncate(path, offset)
                return
            resume = _next_valid(view, offset + 1, max_len)
            if resume is None and repair and _torn(view, offset):
                fits = offset + HEADER.size + _length(view, offset) <= size
                logger.warning(
                    "%s: torn tail at offset %d (%s): cutting off %d bytes; "
                    "DATA WRITTEN AFTER THE LAST FSYNC MAY HAVE BEEN LOST%s",
                    path, offset, problem, size - offset, _OVER_ZEROS if fits else "",
                )  # fmt: skip
                self._files.truncate(path, offset)
                return
            drops = _drops(view, offset, resume)
            if not self._salvage:
                raise JournalCorrupt(str(path), offset, problem, drops)
            logger.error("%s: damaged record at offset %d (%s): salvage drops %s",
                         path, offset, problem, drops)  # fmt: skip
            self._on_salvaged(path)
            if resume is None:
                return
            offset = resume


_BAD_HEADER = "damaged file header (not a kestrelq journal)"
_OVER_ZEROS = (
    " (a whole record with zeros from a sector boundary to its end: torn over the zeros written"
    " ahead, or damaged on the disk after it was written, which cannot be told apart)"
)


def _header_never_written(view: memoryview) -> bool:
    """A file cut inside its header, or zeros from the start: its first write never reached
    the disk whole (a crash while it was created, or a power cut before its first fsync)."""
    head = bytes(view[: len(MAGIC)]).rstrip(b"\0")
    return MAGIC.startswith(head) and not bytes(view[len(MAGIC) :]).strip(b"\0")


def _torn(view: memoryview, offset: int) -> bool:
    """Whether the bytes at `offset` (the last, undecodable ones) can be a torn write.

    A torn write is a record cut short by the end of the file: its header is incomplete, or
    the length it declares runs past the end; or zeros, a file extended but never written.
    A record that fits in the file and fails its checksum was written whole and then
    damaged: that is corruption, even at the very end.
    """
    size = len(view)
    if offset + HEADER.size > size:
        return True
    length: int = LENGTH.unpack_from(view, offset)[0]
    if length == 0:
        return not bytes(view[offset:]).strip(b"\0")
    if offset + HEADER.size + length > size:
        return True
    # Over the zeros written ahead: the record's first sectors reached the disk and the rest
    # did not, so zeros run from a sector boundary inside it to the end of the file. A record
    # damaged after it was written has no such run, unless its own bytes end in zeros from a
    # sector boundary: that one cannot be told from a torn write (both fail the checksum, and
    # what the last fsync covered is not on the disk), so it is cut off too, and the warning
    # says so (docs/journal.md, "Recovery", names the limit).
    written_end = offset + len(bytes(view[offset:]).rstrip(b"\0"))
    sector_end = -(-written_end // _SECTOR_BYTES) * _SECTOR_BYTES
    return sector_end < offset + HEADER.size + length


def _length(view: memoryview, offset: int) -> int:
    """The length a record's header at `offset` declares (past the end: cut in its header)."""
    if offset + HEADER.size > len(view):
        return len(view)
    length: int = LENGTH.unpack_from(view, offset)[0]
    return length


def _zeros_from(view: memoryview, offset: int) -> bool:
    """Whether the file holds only zeros from `offset` (a record boundary) to its end."""
    if offset + LENGTH.size <= len(view) and LENGTH.unpack_from(view, offset)[0]:
        return False  # a record's length is never 0: the cheap answer for every record
    return not bytes(view[offset:]).strip(b"\0")


def _drops(view: memoryview, offset: int, resume: int | None) -> str:
    """What salvage gives up for damage at `offset`: up to the next whole record, or all."""
    if resume is None:
        return (
            f"the {len(view) - offset} bytes from offset {offset} to the end of the file "
            "(no whole record follows)"
        )
    return (
        f"the {resume - offset} bytes from offset {offset} to {resume}, where the next whole "
        "record starts"
    )


def _release(view: memoryview, released: int, offset: int) -> int:
    """Drop the mapped pages before `offset` once 8 MiB have been read past the last drop.

    Returns the new release point. Only a mapped file has pages to drop.
    """
    mapped = view.obj
    if offset - released < _RELEASE_BYTES or not isinstance(mapped, mmap.mmap):
        return released
    upto = offset - offset % mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, released, upto - released)
    return upto


def _next_valid(view: memoryview, start: int, max_len: int) -> int | None:
    """Offset of the first decodable record at or after `start`, None if there is none."""
    size = len(view)
    # A tail of zeros (written ahead, or a file extended but never written) holds nothing,
    # and no record starts inside it: a record's header has a length, which is not zero.
    last = start + len(bytes(view[start:]).rstrip(b"\0"))
    if last == start:
        return None
    for offset in range(start, min(last, size - RECORD_OVERHEAD + 1)):
        try:
            if decode(view, offset, max_len) is not None:
                return offset
        except JournalCorrupt:
            continue
    return None
