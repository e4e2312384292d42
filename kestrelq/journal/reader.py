"""Reading segment files back: records for replay, a fast verify, salvage of damage.

Theory of operation
-------------------
A reader has to tell three endings of a file apart, because each asks for a different answer:

- a clean end: every record whole;
- a torn tail: the last record cut short by the end of the file, the normal trace of a crash
  in the middle of an append (or of a file extended but never written: zeros). In the newest
  segment it is cut off with a warning; nothing acknowledged under `fsync always` can be in
  it, since a reply waits for the fsync that makes the record whole;
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
from collections.abc import Callable, Iterator
from pathlib import Path

from kestrelq.errors import JournalCorrupt
from kestrelq.journal.files import Files
from kestrelq.journal.format import MAGIC, RECORD_OVERHEAD, Record, decode, record_end

logger = logging.getLogger(__name__)

_RELEASE_BYTES = 8 << 20


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

        With `repair`, a torn tail is cut off the file (the newest segment after a crash);
        without, it is damage like any other.
        """
        with self._files.mapped(path) as view:
            size = len(view)
            if size <= len(MAGIC) and repair:
                return
            if view[: len(MAGIC)] != MAGIC:
                raise JournalCorrupt(str(path), 0, "not a kestrelq journal")
            yield from self._records(path, view, start, repair)

    def verify(self, path: Path, start: int) -> None:
        """Check lengths and checksums from `start` to the end of a segment, without decoding."""
        max_len = self._max_len
        with self._files.mapped(path) as view:
            released = 0
            offset = start
            size = len(view)
            while offset < size:
                released = _release(view, released, offset)
                try:
                    end = record_end(view, offset, max_len)
                except JournalCorrupt as exc:
                    raise exc.in_file(str(path)) from None
                if end is None:
                    raise JournalCorrupt(str(path), offset, "record cut short")
                offset = end

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
                problem = "record cut short"
            except JournalCorrupt as exc:
                decoded = None
                problem = exc.detail
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
                self._files.truncate(path, offset)
                return
            if not self._salvage:
                raise JournalCorrupt(str(path), offset, problem)
            logger.error(
                "%s: damaged record at offset %d (%s): salvage skips %d bytes",
                path, offset, problem, (resume or size) - offset,
            )  # fmt: skip
            self._on_salvaged(path)
            if resume is None:
                return
            offset = resume


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
    # A tail of zeros (a file extended but never written, as after a crash) holds nothing.
    if not bytes(view[start:]).strip(b"\0"):
        return None
    for offset in range(start, size - RECORD_OVERHEAD + 1):
        try:
            if decode(view, offset, max_len) is not None:
                return offset
        except JournalCorrupt:
            continue
    return None
