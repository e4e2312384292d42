"""The read-behind cursor: where the first item that is only on disk is, and reading from it.

Theory of operation
-------------------
A queue keeps at most `max_memory_bytes` of ready items in memory; later items are only in the
journal (see `kestrelq.queue.state`). Every ADD record past the first one behind is an item
behind, in order, so the cursor needs only a position, (segment, offset) of that first ADD,
and reads forward from it, skipping every other kind of record. SNAP_ADD records are skipped
too: they are a checkpoint's copies of items already in memory.

The position lives in memory and in each checkpoint's BEHIND record; the journal keeps every
segment from the cursor's on (`keep_from`), so the records behind are never deleted under it.
Items behind that are not where the position says are damage: JournalCorrupt, unless the store
salvages, which drops them with an error.

The records are written before they are read: a cursor is given `before_read`, which writes
the store's batched records, since the items wanted may be among them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from kestrelq.errors import JournalCorrupt
from kestrelq.journal.format import MAGIC, Add, Record
from kestrelq.journal.item import Item
from kestrelq.journal.reader import SegmentReader

logger = logging.getLogger(__name__)


class BehindCursor:
    def __init__(
        self,
        name: str,
        reader: SegmentReader,
        segments: Callable[[], list[int]],
        path_of: Callable[[int], Path],
        before_read: Callable[[], None],
        salvage: bool,
        position: tuple[int, int],
    ) -> None:
        self._name = name
        self._reader = reader
        self._segments = segments  # the journal's segment numbers, oldest first
        self._path = path_of
        self._before_read = before_read
        self._salvage = salvage
        self._pointer = position

    def seek(self, segment: int, offset: int) -> None:
        self._pointer = (segment, offset)

    def position(self) -> tuple[int, int]:
        return self._pointer

    def read(self, count: int, max_bytes: int) -> list[Item]:
        """Up to `count` items from the cursor on, at least one, stopping past `max_bytes`."""
        self._before_read()
        items: list[Item] = []
        size = 0
        for record, segment, end in self._scan(*self._pointer):
            if isinstance(record, Add):
                items.append(record.item)
                size += len(record.item.data)
                self._pointer = (segment, end)
                if len(items) >= count or size >= max_bytes:
                    return items
        if len(items) < count:
            missing = count - len(items)
            problem = f"{missing} items behind are missing"
            if not self._salvage:
                raise JournalCorrupt(
                    str(self._path(self._pointer[0])), self._pointer[1], problem,
                    drops=f"the {missing} missing items",
                )  # fmt: skip
            logger.error("journal %s: %s; salvage drops them", self._name, problem)
        return items

    def verify(self) -> None:
        """Check that the records items behind will be read from are there and whole.

        Those records are not replayed at start-up (that is the point of read-behind), but a
        missing or damaged one must stop the start now, not fail a consumer hours later.
        """
        segment, offset = self._pointer
        numbers = self._segments()
        if segment not in numbers:
            exc = JournalCorrupt(
                str(self._path(segment)), offset,
                "the segment holding the items behind is missing",
                drops="every item behind",
            )  # fmt: skip
            if not self._salvage:
                raise exc
            logger.error("%s; salvage drops every item behind", exc)
            return
        for number in numbers[:-1]:
            if number >= segment:
                start = offset if number == segment else len(MAGIC)
                try:
                    self._reader.verify(self._path(number), start)
                except JournalCorrupt as exc:
                    if not self._salvage:
                        raise
                    logger.error("%s: salvage drops %s and reads the items behind on from "
                                 "there", exc.path, exc.drops)  # fmt: skip

    def _scan(self, segment: int, offset: int) -> Iterator[tuple[Record, int, int]]:
        """Records from (segment, offset) to the end of the journal, with where each ends."""
        for number in self._segments():
            if number < segment:
                continue
            start = offset if number == segment else len(MAGIC)
            for record, end in self._reader.records(self._path(number), start, repair=False):
                yield record, number, end
