"""All queues of a server: lazy creation, fanout, moves between queues, and sessions.

Pure: storage and wake-ups are injected. `Storage.log_for(name)` gives the journal sink of a
queue, `Storage.drop(name)` erases it; `notify(name)` is called whenever a queue gains a ready
item, so the server can hand it to a blocked reader.

A queue comes into being when it is first named, by a set or a get, as in Kestrel; so does a
fanout child (`parent+child`), which from then on gets a copy of every item set on its parent.
Naming a queue must stay cheap, since any client can name as many as it likes: it costs an
entry here and in the storage, and nothing on disk until the queue's first write (the storage
creates the journal file lazily). It is bounded too: past `max_queues` (0: no limit) a new name
is refused with TooManyQueues. Queues found on disk at start-up, and queues that items are
moved into, are created whatever the limit (`check=False`), since refusing them would hide or
drop items that are already stored.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kestrelq.errors import (
    ItemRejected,
    JournalError,
    QueueFull,
    ReadWhileOpen,
    TooManyOpenReads,
    TooManyQueues,
)
from kestrelq.journal.item import Item
from kestrelq.queue import names
from kestrelq.queue.config import QueueConfig
from kestrelq.queue.state import BehindReader, LogFn, QueueState
from kestrelq.value import value


class Storage(Protocol):
    def log_for(self, name: str) -> LogFn: ...

    def behind_for(self, name: str) -> BehindReader | None: ...

    def drop(self, name: str) -> None: ...


@value
class GetOptions:
    """The options of `get <queue>/<opt>/<opt>...`."""

    timeout_ms: int = 0
    open: bool = False
    close: bool = False
    abort: bool = False
    peek: bool = False

    @property
    def fetches(self) -> bool:
        """Whether this get hands out an item (close-only and abort do not)."""
        return not self.abort and (self.open or self.peek or not self.close)


# Relative expiry times are below this many seconds; larger values are Unix times (Kestrel).
_RELATIVE_EXPIRY_LIMIT_S = 1_000_000


def expiry_ms(exptime: int, now_ms: int) -> int:
    """Kestrel's rule for a set's exptime: 0 never; below 1e6 relative seconds; otherwise
    absolute Unix seconds."""
    if exptime == 0:
        return 0
    if exptime < _RELATIVE_EXPIRY_LIMIT_S:
        return max(1, now_ms + exptime * 1000)
    return exptime * 1000


@dataclass(slots=True)
class Counters:
    total_items: int = 0
    cmd_get: int = 0
    cmd_set: int = 0
    cmd_peek: int = 0
    get_hits: int = 0
    get_misses: int = 0
    queue_creates: int = 0
    queue_deletes: int = 0
    queue_expires: int = 0


class QueueCollection:
    """The set of queues, created on first use."""

    def __init__(
        self,
        storage: Storage,
        defaults: QueueConfig = QueueConfig(),
        overrides: dict[str, QueueConfig] | None = None,
        notify: Callable[[str], None] = lambda name: None,
        max_queues: int = 0,
        on_dead_letter: Callable[[str, str, Item], None] = lambda source, target, item: None,
    ) -> None:
        self._storage = storage
        self.max_queues = max_queues
        self.defaults = defaults
        self.overrides = dict(overrides or {})
        self._notify = notify
        # Told (source, target, item) of every poison message moved, so the edge can say so:
        # workers in a pool each see only their own share of its deliveries.
        self._on_dead_letter = on_dead_letter
        self.queues: dict[str, QueueState] = {}
        self._children: dict[str, list[str]] = {}
        self.counters = Counters()
        # Where a new queue's xids start: past every xid a deleted queue handed out, so an xid
        # a client still holds for a deleted queue never names an open read of its successor.
        # One number for all names, so deleting many queues costs no memory.
        self._first_xid = 1

    # -- queues ----------------------------------------------------------------------------

    def config_for(self, name: str) -> QueueConfig:
        if name in self.overrides:
            return self.overrides[name]
        parent = names.fanout_parent(name)
        if parent is not None and parent in self.overrides:
            return self.overrides[parent]
        return self.defaults

    def queue(self, name: str, *, check: bool = True) -> QueueState:
        """The queue called `name`, created (and registered as a fanout child) if new.

        A new queue whose derived names are invalid (see QueueConfig.check_targets), or one past
        `max_queues`, is refused with `check`; recovery and moves into a queue create it
        regardless, since refusing there would lose what the journal or the source queue holds.
        """
        state = self.queues.get(name)
        if state is None:
            names.validate(name)
            config = self.config_for(name)
            if check:
                config.check_targets(name)
                if self.max_queues and len(self.queues) >= self.max_queues:
                    raise TooManyQueues(
                        f"too many queues: {name} would pass max_queues ({self.max_queues})"
                    )
            state = QueueState(
                name,
                config,
                self._storage.log_for(name),
                on_expired=functools.partial(self._expire, name),
                on_dead=functools.partial(self._dead_letter, name),
                behind=self._storage.behind_for(name),
                first_xid=self._first_xid,
            )
            self.queues[name] = state
            parent = names.fanout_parent(name)
            if parent is not None:
                self._children.setdefault(parent, []).append(name)
            self.counters.queue_creates += 1
        return state

    def existing(self, name: str) -> QueueState | None:
        return self.queues.get(name)

    def reconfigure(self, defaults: QueueConfig, overrides: dict[str, QueueConfig]) -> None:
        self.defaults = defaults
        self.overrides = dict(overrides)
        for name, state in self.queues.items():
            state.config = self.config_for(name)

    def children(self, name: str) -> list[str]:
        return list(self._children.get(name, ()))

    # -- commands --------------------------------------------------------------------------

    def add(self, name: str, item: Item, now_ms: int) -> None:
        """Enqueue on `name` and copy to its fanout children known now."""
        counters = self.counters
        counters.cmd_set += 1
        # The parent first: if it refuses the item (full, too large, its journal failed), no
        # child has a copy yet, so an error means "nowhere" and the client's retry cannot leave
        # a second copy in a child.
        state = self.queues.get(name)  # the usual case, without a call
        if state is None:
            state = self.queue(name)
        state.add(item, now_ms)
        counters.total_items += 1
        for child in self._children.get(name, ()):
            try:
                self.queue(child).add(item, now_ms)
            except (QueueFull, ItemRejected, JournalError):
                # A child that cannot take its copy (full, or its journal write failed) misses
                # it and counts it; it does not refuse the set for the parent and every other
                # child, as Kestrel's fanout does not.
                self.queue(child).stats.discarded += 1
                continue
            self.counters.total_items += 1
            self._notify(child)
        self._notify(name)

    def delete(self, name: str) -> None:
        """Drop a queue, its items and its journal. Open reads on it are forgotten."""
        state = self.queues.pop(name, None)
        parent = names.fanout_parent(name)
        if parent is not None and name in self._children.get(parent, ()):
            self._children[parent].remove(name)
        if state is not None:
            self._first_xid = max(self._first_xid, state.next_xid)
            self._storage.drop(name)
            self.counters.queue_deletes += 1

    def flush_all(self) -> None:
        for state in self.queues.values():
            state.flush()

    def flush_expired(self, name: str, now_ms: int) -> int:
        state = self.queues.get(name)
        return state.discard_expired(now_ms) if state is not None else 0

    def flush_all_expired(self, now_ms: int) -> int:
        return sum(s.discard_expired(now_ms) for s in list(self.queues.values()))

    def time_out_reads(self, now_ms: int) -> int:
        """Return stale open reads to their queues; how many went back."""
        total = 0
        for name, state in list(self.queues.items()):
            count = state.time_out_reads(now_ms)
            if count:
                self._notify(name)
                total += count
        return total

    def unremove(self, name: str, xid: int) -> None:
        state = self.queues.get(name)
        if state is not None and state.unremove(xid):
            self._notify(name)

    def totals(self) -> tuple[int, int]:
        """(items, bytes) over all queues."""
        return (
            sum(s.items for s in self.queues.values()),
            sum(s.bytes for s in self.queues.values()),
        )

    # -- moves -----------------------------------------------------------------------------

    def _expire(self, source: str, item: Item) -> None:
        self.counters.queue_expires += 1
        target = self.queues[source].config.expire_to
        if target and target != source:
            self.queue(target, check=False).add(item, item.added_ms, essential=True)
            self._notify(target)

    def _dead_letter(self, source: str, item: Item) -> None:
        target = self.queues[source].config.dead_letter_queue(source)
        if target != source:
            self.queue(target, check=False).add(item, item.added_ms, essential=True)
            self._notify(target)
        self._on_dead_letter(source, target, item)


@dataclass(slots=True)
class Session:
    """One connection's view: its open reads per queue, oldest first.

    Rules (Kestrel's): `close` confirms the oldest open read, `abort` returns it to the head;
    both are harmless with nothing open. Past `max_open_reads` an `open` is refused, and so is a
    plain get on a queue where this connection holds an open read.
    """

    collection: QueueCollection
    max_open_reads: int = 1
    open_xids: dict[str, deque[int]] = field(default_factory=dict)

    def get(self, name: str, options: GetOptions, now_ms: int) -> Item | None:
        coll = self.collection
        state = coll.queues.get(name)  # the usual case, without a call
        if state is None:
            state = coll.queue(name)
        held = self.open_xids.get(name)
        if held is None:
            held = self.open_xids[name] = deque()
        if options.close and held:
            state.confirm(held.popleft())
        if options.abort:
            if held:
                coll.unremove(name, held.popleft())
            return None
        if options.peek:
            coll.counters.cmd_peek += 1
            return self._count(state.peek(now_ms))
        if options.open:
            if len(held) >= self.max_open_reads:
                raise TooManyOpenReads(f"too many open reads on {name}")
            coll.counters.cmd_get += 1
            opened = state.open(now_ms)
            if opened is None:
                return self._count(None)
            held.append(opened[0])
            coll.counters.get_hits += 1  # _count, inline: every reliable read comes here
            return opened[1]
        if options.close:
            return None
        if held:
            raise ReadWhileOpen(f"plain get on {name} with an open read")
        coll.counters.cmd_get += 1
        return self._count(state.remove(now_ms))

    def confirm(self, name: str, count: int) -> bool:
        """`confirm <q> <count>`: confirm the `count` oldest open reads, all or none."""
        held = self.open_xids.get(name)
        state = self.collection.existing(name)
        if state is None or not held or count <= 0 or count > len(held):
            return False
        for _ in range(count):
            state.confirm(held.popleft())
        return True

    def open_count(self, name: str) -> int:
        return len(self.open_xids.get(name, ()))

    def can_open(self, name: str) -> bool:
        """Whether one more open read on `name` is within max_open_reads."""
        return self.open_count(name) < self.max_open_reads

    def monitor_limit(self, max_items: int) -> int:
        """How many items `monitor <q> <s> [max_items]` hands out at most (0: the open limit)."""
        return max_items or self.max_open_reads

    def open_batch(self, name: str, now_ms: int, limit: int) -> list[Item]:
        """Open reads of up to `limit` items (fewer when the queue runs dry or max_open_reads
        is reached): what `monitor` hands out in one go."""
        items: list[Item] = []
        while len(items) < limit and self.can_open(name):
            item = self.get(name, GetOptions(open=True), now_ms)
            if item is None:
                break
            items.append(item)
        return items

    def release_all(self) -> None:
        """The connection ended: every open read goes back to the head of its queue."""
        for name, held in self.open_xids.items():
            while held:
                # Newest first, so the oldest read ends up at the very head.
                self.collection.unremove(name, held.pop())
        self.open_xids.clear()

    def _count(self, item: Item | None) -> Item | None:
        if item is None:
            self.collection.counters.get_misses += 1
        else:
            self.collection.counters.get_hits += 1
        return item
