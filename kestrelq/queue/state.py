"""The state of one queue: pure, no I/O, time passed in.

Theory of operation
-------------------
Rule 1: every change is logged before it is made. Each mutating method first hands the
journal record it implies to `log`, then changes memory. If `log` raises (disk full), nothing
has changed, so the caller can refuse the command and the queue stays consistent with its
journal.

Rule 2: `apply(record)` is the only other way to change state, used to replay a journal. A
live mutation and the replay of its record must end in the same state; the tests check this.

Ready items sit in a deque, oldest first. An open read (`/open`) takes the head item out of the
deque and keeps it under a transaction id (xid) until it is confirmed (gone) or unremoved (back
at the head). Xids are never reused while the server runs, so a confirm for an open read that
already timed out can never confirm somebody else's item. That holds across a queue's lives
too: a queue deleted and named again starts its xids where the old one stopped (`first_xid`,
see QueueCollection.delete), since a client may still hold an xid of the deleted queue.

Read-behind: a queue holds at most `max_memory_bytes` of ready items in memory. Once an add
would pass that, the item is only journalled and counted as *behind*; from then on every add
goes behind (order!) until the reader has caught up. As the memory part drains below half, it
is refilled from the journal through the injected `BehindReader`, which knows where the first
behind ADD record is. So a backlog of millions costs disk, not RAM.

Expired items are only removed from the head (as Kestrel does), on every add, remove, peek and
on the periodic sweep. Items that must go elsewhere (expire-to, dead-letter) are handed to a
callback *before* they are removed here, so a failure to store them elsewhere leaves them where
they were: at worst an item is in two places after a crash, never in none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from kestrelq.errors import ItemRejected, QueueFull
from kestrelq.journal.format import (
    CHECKPOINT,
    FLUSH,
    REMOVE,
    Add,
    Behind,
    Checkpoint,
    Confirm,
    Flush,
    Open,
    Record,
    Remove,
    SnapAdd,
    Unremove,
)
from kestrelq.journal.item import Item
from kestrelq.queue.config import QueueConfig

# log(record, essential): essential records free the disk reserve if they must (see Storage).
LogFn = Callable[[Record, bool], None]
MoveFn = Callable[[Item], None]


class BehindReader(Protocol):
    """Reads items that are only in the journal, in order (see read-behind above)."""

    def mark(self) -> None:
        """The ADD record logged (or replayed) last is the first item behind."""

    def seek(self, segment: int, offset: int) -> None:
        """The first item behind is the ADD record at this position (from a checkpoint)."""

    def position(self) -> tuple[int, int]:
        """Where the first item behind is, for a checkpoint."""
        ...

    def read(self, count: int, max_bytes: int) -> list[Item]:
        """Up to `count` next items behind, at least one, stopping past `max_bytes`."""
        ...


@dataclass(slots=True)
class OpenRead:
    item: Item
    opened_ms: int


@dataclass(slots=True)
class QueueStats:
    """A queue's counters since it was created. Replay counts only the adds its journal still
    holds, so the server keeps these beside the journal (server/counters.py) across restarts."""

    total_items: int = 0
    got_items: int = 0  # handed to a reader: plain gets and opens (a redelivery counts again)
    expired_items: int = 0
    discarded: int = 0
    transactions: int = 0
    canceled_transactions: int = 0
    timed_out_transactions: int = 0
    dead_lettered: int = 0
    total_flushes: int = 0
    # How long the last fetched item had waited, fixed when it was fetched: a figure taken
    # as "now minus its add time" would grow while nobody reads.
    last_wait_ms: int = 0


def _no_move(item: Item) -> None:
    """Drop the item (no expire-to / dead-letter target)."""


class QueueState:
    """Ready items, open reads and counters of one queue."""

    def __init__(
        self,
        name: str,
        config: QueueConfig,
        log: LogFn,
        on_expired: MoveFn = _no_move,
        on_dead: MoveFn = _no_move,
        behind: BehindReader | None = None,
        first_xid: int = 1,
    ) -> None:
        self.name = name
        self.config = config
        self.ready: deque[Item] = deque()
        self.open_reads: dict[int, OpenRead] = {}
        self.mem_bytes = 0
        self.behind_items = 0
        self.behind_bytes = 0
        self.stats = QueueStats()
        self._log = log
        self._behind = behind
        self._on_expired = on_expired
        self._on_dead = on_dead
        self._next_xid = first_xid

    # -- inspection ----------------------------------------------------------------------

    @property
    def next_xid(self) -> int:
        """The xid the next open read gets."""
        return self._next_xid

    @property
    def items(self) -> int:
        return len(self.ready) + self.behind_items

    @property
    def bytes(self) -> int:
        return self.mem_bytes + self.behind_bytes

    def age_ms(self) -> int:
        """How long the last fetched item had waited; 0 when the queue is empty (Kestrel)."""
        return self.stats.last_wait_ms if self.items else 0

    def oldest_age_ms(self, now_ms: int) -> int:
        """How long the head item has waited so far; 0 when no item is ready."""
        return max(0, now_ms - self.ready[0].added_ms) if self.ready else 0

    def snapshot(self) -> Iterator[Record]:
        """Records that rebuild this state from nothing: the checkpoint of a new segment."""
        yield CHECKPOINT
        for xid, read in self.open_reads.items():
            item = read.item
            yield SnapAdd(item.with_deliveries(max(0, item.deliveries - 1)))
            yield Open(xid)
        for item in self.ready:
            yield SnapAdd(item)
        if self.behind_items and self._behind is not None:
            segment, offset = self._behind.position()
            yield Behind(segment, offset, self.behind_items, self.behind_bytes)

    # -- mutations (log first, then change) ----------------------------------------------

    def add(self, item: Item, now_ms: int, *, essential: bool = False) -> None:
        """Append an item. Raises ItemRejected or QueueFull when it cannot be taken."""
        cfg = self.config
        size = len(item.data)
        if cfg.max_item_size and size > cfg.max_item_size:
            raise ItemRejected(f"item of {size} bytes over max_item_size {cfg.max_item_size}")
        if cfg.max_age_ms:
            cap = item.added_ms + cfg.max_age_ms
            if item.expires_ms == 0 or item.expires_ms > cap:
                item = item.with_expiry(cap)
        if self._head_may_expire():
            self.discard_expired(now_ms)
        while (cfg.max_items or cfg.max_bytes) and self._full(size):
            if not cfg.discard_old_when_full or not self.ready:
                raise QueueFull(f"queue {self.name} is full")
            self._remove_head()
            self.stats.discarded += 1
        self._log(Add(item), essential)
        self._append(item)
        self.stats.total_items += 1

    def remove(self, now_ms: int) -> Item | None:
        """Take the head item for good (plain get)."""
        if self._head_may_expire():
            self.discard_expired(now_ms)
        if self._head() is None:
            return None
        item = self._remove_head()
        self._fetched(item, now_ms)
        return item

    def peek(self, now_ms: int) -> Item | None:
        self.discard_expired(now_ms)
        return self._head()

    def open(self, now_ms: int) -> tuple[int, Item] | None:
        """Start a reliable read of the head item; returns (xid, item)."""
        if self._head_may_expire():
            self.discard_expired(now_ms)
        limit = self.config.max_deliveries
        while (head := self._head()) is not None:
            if limit and head.deliveries >= limit:
                # Given out `limit` times and never confirmed: a poison message.
                self._on_dead(head.with_deliveries(0))
                self._remove_head()
                self.stats.dead_lettered += 1
                continue
            xid = self._take_xid()
            self._log(Open(xid), True)
            item = self._apply_open(xid, now_ms)
            self.stats.transactions += 1
            self._fetched(item, now_ms)
            return xid, item
        return None

    def confirm(self, xid: int) -> bool:
        """Confirm open read `xid`; False if it is not open (timed out or unknown)."""
        if xid not in self.open_reads:
            return False
        self._log(Confirm(xid), True)
        del self.open_reads[xid]
        return True

    def unremove(self, xid: int) -> bool:
        """Put open read `xid` back at the head; False if it is not open."""
        if xid not in self.open_reads:
            return False
        self._log(Unremove(xid), True)
        self._apply_unremove(xid)
        self.stats.canceled_transactions += 1
        return True

    def flush(self) -> int:
        """Remove every ready item; open reads are left alone (Kestrel)."""
        count = self.items
        if count:
            self._log(FLUSH, True)
            self._apply_flush()
        self.stats.total_flushes += 1
        return count

    def discard_expired(self, now_ms: int, limit: int = 0) -> int:
        """Remove expired items from the head; returns how many."""
        count = 0
        while (
            (head := self._head()) is not None
            and head.expired(now_ms)
            and (not limit or count < limit)
        ):
            self._on_expired(head.with_expiry(0, deliveries=0))
            self._remove_head()
            self.stats.expired_items += 1
            count += 1
        return count

    def time_out_reads(self, now_ms: int) -> int:
        """Return open reads older than the queue's open timeout to the head."""
        timeout_ms = self.config.open_timeout_ms
        if not timeout_ms:
            return 0
        stale = [x for x, r in self.open_reads.items() if now_ms - r.opened_ms >= timeout_ms]
        # Newest first, so that the oldest ends up at the very head.
        for xid in reversed(stale):
            self.unremove(xid)
        self.stats.timed_out_transactions += len(stale)
        return len(stale)

    # -- replay ----------------------------------------------------------------------------

    def apply(self, record: Record) -> None:
        """Replay one journal record (no logging, no limits, no expiry)."""
        # Keyword patterns, not positional: Debian's mypyc (1.0, which compiles the images'
        # hot path) crashes on a positional pattern of a dataclass.
        match record:
            case Add(item=item):
                self._append(item)
                self.stats.total_items += 1
            case SnapAdd(item=item):
                self._append_memory(item)
            case Remove():
                if self._head() is not None:
                    self._pop_head()
            case Open(xid=xid):
                if self._head() is not None:
                    self._apply_open(xid, 0)
                self._next_xid = max(self._next_xid, xid + 1)
            case Confirm(xid=xid):
                self.open_reads.pop(xid, None)
            case Unremove(xid=xid):
                if xid in self.open_reads:
                    self._apply_unremove(xid)
            case Flush():
                self._apply_flush()
            case Checkpoint():
                self._apply_flush()
                self.open_reads.clear()
            case Behind(segment=segment, offset=offset, count=count, bytes=size):
                if self._behind is not None:
                    self._behind.seek(segment, offset)
                    self.behind_items, self.behind_bytes = count, size

    def reopened_xids(self) -> list[int]:
        """Open reads found after a replay, newest first (so unremoving keeps their order)."""
        return list(reversed(self.open_reads))

    # -- helpers ---------------------------------------------------------------------------

    def _fetched(self, item: Item, now_ms: int) -> None:
        self.stats.got_items += 1
        self.stats.last_wait_ms = max(0, now_ms - item.added_ms)

    def _head_may_expire(self) -> bool:
        """Whether discard_expired could remove anything: the head item has an expiry time,
        or the head is on disk only. Most queues hold items that never expire, and this is
        asked on every add and read, so it costs one look at the head."""
        ready = self.ready
        return bool(ready[0].expires_ms if ready else self.behind_items)

    def _full(self, incoming_bytes: int) -> bool:
        cfg = self.config
        return bool(
            (cfg.max_items and self.items >= cfg.max_items)
            or (cfg.max_bytes and self.bytes + incoming_bytes > cfg.max_bytes and self.items)
        )

    def _append(self, item: Item) -> None:
        size = len(item.data)
        behind = self._behind
        if behind is not None and (
            self.behind_items
            or (self.ready and self.mem_bytes + size > self.config.max_memory_bytes)
        ):
            if not self.behind_items:
                behind.mark()
            self.behind_items += 1
            self.behind_bytes += size
        else:
            self.ready.append(item)  # _append_memory, inline: every set comes here
            self.mem_bytes += size

    def _append_memory(self, item: Item) -> None:
        self.ready.append(item)
        self.mem_bytes += len(item.data)

    def _head(self) -> Item | None:
        if not self.ready and self.behind_items:
            self._refill()
        return self.ready[0] if self.ready else None

    def _pop_head(self) -> Item:
        item = self.ready.popleft()
        self.mem_bytes -= len(item.data)
        if self.behind_items and self.mem_bytes < self.config.max_memory_bytes // 2:
            self._refill()
        return item

    def _refill(self) -> None:
        assert self._behind is not None
        room = max(1, self.config.max_memory_bytes - self.mem_bytes)
        items = self._behind.read(self.behind_items, room)
        for item in items:
            self._append_memory(item)
            self.behind_items -= 1
            self.behind_bytes -= len(item.data)
        if not items:
            # Only a salvaged, damaged journal comes up short: what it lost is gone.
            self.behind_items = self.behind_bytes = 0

    def _remove_head(self) -> Item:
        self._log(REMOVE, True)
        return self._pop_head()

    def _apply_open(self, xid: int, now_ms: int) -> Item:
        item = self._pop_head().delivered()
        self.open_reads[xid] = OpenRead(item, now_ms)
        return item

    def _apply_unremove(self, xid: int) -> None:
        read = self.open_reads.pop(xid)
        self.ready.appendleft(read.item)
        self.mem_bytes += len(read.item.data)

    def _apply_flush(self) -> None:
        self.ready.clear()
        self.mem_bytes = self.behind_items = self.behind_bytes = 0

    def _take_xid(self) -> int:
        xid = self._next_xid
        self._next_xid += 1
        return xid
