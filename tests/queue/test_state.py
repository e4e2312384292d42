"""The pure queue core: every mutation logs first, and replaying the log rebuilds the state."""

from __future__ import annotations

import pytest

from kestrelq.errors import (
    InvalidQueueName,
    ItemRejected,
    JournalFull,
    JournalWriteFailed,
    QueueFull,
    ReadWhileOpen,
    TooManyOpenReads,
)
from kestrelq.journal.format import Add, Record
from kestrelq.journal.item import Item
from kestrelq.queue.collection import GetOptions, QueueCollection, Session
from kestrelq.queue.config import QueueConfig
from kestrelq.queue.state import LogFn, QueueState

OPEN = GetOptions(open=True)
CLOSE_OPEN = GetOptions(open=True, close=True)
CLOSE = GetOptions(close=True)
ABORT = GetOptions(abort=True)
PEEK = GetOptions(peek=True)
PLAIN = GetOptions()


class ListBehind:
    """A BehindReader over a list of records: positions are (0, index)."""

    def __init__(self, log: list[Record]) -> None:
        self.log = log
        self.index = 0
        self.last = -1  # the record appended or replayed last, as a journal tracks it

    def mark(self) -> None:
        self.index = self.last if self.last >= 0 else len(self.log) - 1

    def seek(self, segment: int, offset: int) -> None:
        self.index = offset

    def position(self) -> tuple[int, int]:
        return 0, self.index

    def read(self, count: int, max_bytes: int) -> list[Item]:
        items: list[Item] = []
        while len(items) < count and (not items or sum(len(i.data) for i in items) < max_bytes):
            record = self.log[self.index]
            self.index += 1
            if isinstance(record, Add):
                items.append(record.item)
        return items


class MemoryStorage:
    """Journals as lists of records, with a switch to refuse writes like a full disk."""

    def __init__(self) -> None:
        self.logs: dict[str, list[Record]] = {}
        self.full = False
        self.dropped: list[str] = []

    def log_for(self, name: str) -> LogFn:
        log = self.logs.setdefault(name, [])

        def append(record: Record, essential: bool) -> None:
            if self.full and not essential:
                raise JournalFull("disk full")
            log.append(record)

        return append

    def behind_for(self, name: str) -> ListBehind:
        return ListBehind(self.logs.setdefault(name, []))  # live: `last` is the list's end

    def drop(self, name: str) -> None:
        self.dropped.append(name)
        self.logs.pop(name, None)


def make(
    config: QueueConfig = QueueConfig(), **overrides: QueueConfig
) -> tuple[QueueCollection, MemoryStorage, list[str]]:
    storage = MemoryStorage()
    notified: list[str] = []
    coll = QueueCollection(storage, config, overrides, notify=notified.append)
    return coll, storage, notified


def item(data: bytes, now_ms: int = 1000, **kw: int) -> Item:
    return Item(data, added_ms=now_ms, **kw)


def present(found: Item | None) -> Item:
    """An item that must be there (a get or remove that may return None)."""
    assert found is not None
    return found


def replay_into(state: QueueState, behind: ListBehind, start: int = 0) -> QueueState:
    for index in range(start, len(behind.log)):
        behind.last = index
        state.apply(behind.log[index])
    return state


def replayed(storage: MemoryStorage, name: str, config: QueueConfig = QueueConfig()) -> QueueState:
    behind = ListBehind(storage.logs[name])
    return replay_into(QueueState(name, config, lambda r, e: None, behind=behind), behind)


def same(a: QueueState, b: QueueState) -> None:
    assert list(a.ready) == list(b.ready)
    assert {x: r.item for x, r in a.open_reads.items()} == {
        x: r.item for x, r in b.open_reads.items()
    }
    assert a.bytes == b.bytes


def test_fifo_and_replay() -> None:
    coll, storage, notified = make()
    for i in range(5):
        coll.add("q", item(b"m%d" % i), 1000)
    s = Session(coll)
    assert s.get("q", PLAIN, 1000) == item(b"m0")
    assert s.get("q", OPEN, 1000) == item(b"m1", deliveries=1)
    assert s.get("q", PEEK, 1000) == item(b"m2")
    assert notified == ["q"] * 5
    same(coll.queue("q"), replayed(storage, "q"))


def test_close_confirms_and_abort_returns_to_head() -> None:
    coll, storage, _ = make()
    for i in range(3):
        coll.add("q", item(b"m%d" % i), 0)
    s = Session(coll)
    assert present(s.get("q", OPEN, 0)).data == b"m0"
    assert s.get("q", ABORT, 0) is None
    assert present(s.get("q", OPEN, 0)).data == b"m0"
    assert present(s.get("q", CLOSE_OPEN, 0)).data == b"m1"
    assert s.get("q", CLOSE, 0) is None
    assert [i.data for i in coll.queue("q").ready] == [b"m2"]
    same(coll.queue("q"), replayed(storage, "q"))


def test_close_and_abort_with_nothing_open_are_harmless() -> None:
    coll, storage, _ = make()
    coll.add("q", item(b"a"), 0)
    s = Session(coll)
    assert s.get("q", CLOSE, 0) is None
    assert s.get("q", ABORT, 0) is None
    # Harmless: the item is still there, nothing is open and nothing more was journalled.
    state = coll.queue("q")
    assert list(state.ready) == [item(b"a")] and not state.open_reads
    assert storage.logs["q"] == [Add(item(b"a"))]
    # A close with nothing open does not stop the open that comes with it.
    assert s.get("q", CLOSE_OPEN, 0) == item(b"a", deliveries=1)
    assert s.get("q", CLOSE_OPEN, 0) is None  # confirms "a"; the queue is empty now
    assert not state.open_reads and state.items == 0
    same(state, replayed(storage, "q"))


def test_open_limit_and_plain_get_with_open_read() -> None:
    coll, _, _ = make()
    coll.add("q", item(b"a"), 0)
    coll.add("q", item(b"b"), 0)
    s = Session(coll, max_open_reads=1)
    s.get("q", OPEN, 0)
    with pytest.raises(TooManyOpenReads):
        s.get("q", OPEN, 0)
    with pytest.raises(ReadWhileOpen):
        s.get("q", PLAIN, 0)
    assert s.get("q", PEEK, 0) == item(b"b")  # peek while open is allowed (Kestrel)


def test_disconnect_returns_open_reads_in_order() -> None:
    coll, storage, notified = make()
    for i in range(4):
        coll.add("q", item(b"m%d" % i), 0)
    s = Session(coll, max_open_reads=3)
    for _ in range(3):
        s.get("q", OPEN, 0)
    s.release_all()
    assert notified == ["q"] * 7  # 4 adds, 3 returns: each may wake a blocked reader
    assert [i.data for i in coll.queue("q").ready] == [b"m0", b"m1", b"m2", b"m3"]
    assert [i.deliveries for i in coll.queue("q").ready] == [1, 1, 1, 0]
    same(coll.queue("q"), replayed(storage, "q"))


def test_restart_reopens_reads_at_the_head() -> None:
    coll, storage, _ = make()
    for i in range(3):
        coll.add("q", item(b"m%d" % i), 0)
    s = Session(coll, max_open_reads=2)
    s.get("q", OPEN, 0)
    s.get("q", OPEN, 0)
    state = replayed(storage, "q")
    assert len(state.open_reads) == 2
    for xid in state.reopened_xids():
        state.unremove(xid)
    assert [i.data for i in state.ready] == [b"m0", b"m1", b"m2"]


def test_confirm_command_all_or_nothing() -> None:
    coll, _, _ = make()
    for i in range(3):
        coll.add("q", item(b"m%d" % i), 0)
    s = Session(coll, max_open_reads=3)
    for _ in range(2):
        s.get("q", OPEN, 0)
    assert not s.confirm("q", 3)
    assert not s.confirm("q", 0)
    assert s.confirm("q", 2)
    assert not coll.queue("q").open_reads


def test_limits() -> None:
    coll, _, _ = make(QueueConfig(max_items=2, max_item_size=4))
    coll.add("q", item(b"a"), 0)
    coll.add("q", item(b"b"), 0)
    with pytest.raises(QueueFull):
        coll.add("q", item(b"c"), 0)
    with pytest.raises(ItemRejected):
        coll.add("r", item(b"toolong"), 0)


def test_max_bytes() -> None:
    coll, _, _ = make(QueueConfig(max_bytes=5))
    coll.add("q", item(b"abc"), 0)
    with pytest.raises(QueueFull):
        coll.add("q", item(b"def"), 0)


def test_discard_old_when_full() -> None:
    coll, storage, _ = make(QueueConfig(max_items=2, discard_old_when_full=True))
    for name in (b"a", b"b", b"c"):
        coll.add("q", item(name), 0)
    state = coll.queue("q")
    assert [i.data for i in state.ready] == [b"b", b"c"]
    assert state.stats.discarded == 1
    same(state, replayed(storage, "q"))


def test_expiry_at_head_and_expire_to() -> None:
    coll, storage, notified = make(q=QueueConfig(expire_to="later"))
    coll.add("q", item(b"old", 0, expires_ms=500), 0)
    coll.add("q", item(b"new", 0), 0)
    s = Session(coll)
    assert s.get("q", PLAIN, 1000) == item(b"new", 0)
    moved = coll.queue("later").ready
    assert [i.data for i in moved] == [b"old"] and moved[0].expires_ms == 0
    assert "later" in notified
    assert coll.counters.queue_expires == 1
    same(coll.queue("q"), replayed(storage, "q"))
    same(coll.queue("later"), replayed(storage, "later"))


def test_max_age_caps_expiry() -> None:
    coll, _, _ = make(QueueConfig(max_age_ms=100))
    coll.add("q", item(b"a", 1000, expires_ms=10_000), 1000)
    assert coll.queue("q").ready[0].expires_ms == 1100
    assert coll.flush_all_expired(1101) == 1


def test_dead_letter_after_max_deliveries() -> None:
    coll, storage, _ = make(q=QueueConfig(max_deliveries=2))
    coll.add("q", item(b"poison"), 0)
    coll.add("q", item(b"fine"), 0)
    for _ in range(2):
        s = Session(coll)
        assert present(s.get("q", OPEN, 0)).data == b"poison"
        s.get("q", ABORT, 0)
    s = Session(coll)
    assert present(s.get("q", OPEN, 0)).data == b"fine"
    dead = coll.queue("q_dead").ready
    assert [i.data for i in dead] == [b"poison"] and dead[0].deliveries == 0
    assert coll.queue("q").stats.dead_lettered == 1
    same(coll.queue("q"), replayed(storage, "q", QueueConfig(max_deliveries=2)))


def test_age_is_the_wait_of_the_last_fetched_item_and_does_not_grow_while_idle() -> None:
    coll, _, _ = make()
    for data in (b"a", b"b", b"c"):
        coll.add("q", item(data, 1000), 1000)
    state = coll.queue("q")
    assert (state.age_ms(), state.oldest_age_ms(1000)) == (0, 0)
    assert present(Session(coll).get("q", PLAIN, 1300)).data == b"a"
    assert state.age_ms() == 300
    # Nobody reads for a long while: the last fetched item still waited 300 ms, while the
    # head's own wait goes on growing.
    assert (state.age_ms(), state.oldest_age_ms(60_000)) == (300, 59_000)
    assert present(Session(coll).get("q", OPEN, 2000)).data == b"b"
    assert (state.age_ms(), state.stats.got_items) == (1000, 2)
    Session(coll).get("q", PLAIN, 2500)
    assert (state.age_ms(), state.oldest_age_ms(9999)) == (0, 0)  # empty: 0, as in Kestrel


def test_open_timeout_returns_read_and_late_close_is_harmless() -> None:
    coll, _, notified = make(QueueConfig(open_timeout_ms=100))
    coll.add("q", item(b"a"), 0)
    s = Session(coll)
    s.get("q", OPEN, 0)
    coll.time_out_reads(50)
    assert coll.queue("q").open_reads
    coll.time_out_reads(100)
    assert notified[-1] == "q"
    assert [i.data for i in coll.queue("q").ready] == [b"a"]
    other = Session(coll)
    assert present(other.get("q", OPEN, 100)).data == b"a"
    # The first reader's late close must not confirm the other reader's item.
    s.get("q", CLOSE, 200)
    assert len(coll.queue("q").open_reads) == 1


def test_by_default_an_open_read_goes_back_after_ten_minutes() -> None:
    # A worker that hangs must not hold its message for ever (the worker's own task limit,
    # 5 minutes by default, is below this).
    coll, _, _ = make()
    coll.add("q", item(b"a"), 0)
    Session(coll).get("q", OPEN, 0)
    coll.time_out_reads(600_000 - 1)
    assert coll.queue("q").open_reads
    coll.time_out_reads(600_000)
    assert [i.data for i in coll.queue("q").ready] == [b"a"]


def test_a_new_queue_whose_dead_letter_name_is_over_the_limit_is_refused() -> None:
    coll, _, _ = make(QueueConfig(max_deliveries=1))
    with pytest.raises(InvalidQueueName, match="set dead_letter"):
        coll.queue("q" * 124)
    assert coll.queue("q" * 123).config.dead_letter_queue("q" * 123) == "q" * 123 + "_dead"
    # Recovery (and moves into a queue) create it regardless: refusing would lose items.
    assert coll.queue("r" * 128, check=False)
    with_target, _, _ = make(QueueConfig(max_deliveries=1, dead_letter="graves"))
    assert with_target.queue("q" * 128)


def test_fanout_copies_to_known_children() -> None:
    coll, _, _ = make()
    coll.add("feed", item(b"before"), 0)
    coll.queue("feed+a")
    coll.queue("feed+b")
    coll.add("feed", item(b"after"), 0)
    assert [i.data for i in coll.queue("feed+a").ready] == [b"after"]
    assert [i.data for i in coll.queue("feed+b").ready] == [b"after"]
    assert [i.data for i in coll.queue("feed").ready] == [b"before", b"after"]
    coll.delete("feed+a")
    coll.add("feed", item(b"third"), 0)
    assert "feed+a" not in coll.queues
    assert coll.children("feed") == ["feed+b"]


def test_flush_keeps_open_reads() -> None:
    coll, storage, _ = make()
    for i in range(3):
        coll.add("q", item(b"m%d" % i), 0)
    s = Session(coll)
    s.get("q", OPEN, 0)
    assert coll.queue("q").flush() == 2
    assert len(coll.queue("q").open_reads) == 1
    same(coll.queue("q"), replayed(storage, "q"))


def test_disk_full_refuses_adds_but_not_reads() -> None:
    coll, storage, _ = make()
    coll.add("q", item(b"a"), 0)
    storage.full = True
    with pytest.raises(JournalFull):
        coll.add("q", item(b"b"), 0)
    assert [i.data for i in coll.queue("q").ready] == [b"a"]  # nothing half-done
    s = Session(coll)
    assert present(s.get("q", CLOSE_OPEN, 0)).data == b"a"
    assert s.get("q", CLOSE, 0) is None
    same(coll.queue("q"), replayed(storage, "q"))


def test_snapshot_rebuilds_state_with_delivery_counts() -> None:
    coll, _, _ = make()
    for i in range(3):
        coll.add("q", item(b"m%d" % i), 0)
    s = Session(coll)
    s.get("q", OPEN, 0)
    state = coll.queue("q")
    rebuilt = QueueState("q", QueueConfig(), lambda r, e: None)
    for record in state.snapshot():
        rebuilt.apply(record)
    same(state, rebuilt)
    assert rebuilt.open_reads[1].item == item(b"m0").with_deliveries(1)


def test_read_behind_keeps_a_window_in_memory_and_replays() -> None:
    coll, storage, _ = make(QueueConfig(max_memory_bytes=50))
    for i in range(100):
        coll.add("q", item(b"m%08d" % i), 0)  # 9 bytes each
    state = coll.queue("q")
    assert state.items == 100 and state.bytes == 900
    assert len(state.ready) <= 6 and state.behind_items >= 94
    s = Session(coll)
    got = [present(s.get("q", PLAIN, 0)).data for _ in range(30)]
    assert got == [b"m%08d" % i for i in range(30)]
    assert state.mem_bytes <= 50 + 9

    config = QueueConfig(max_memory_bytes=50)
    again = replayed(storage, "q", config)
    same(state, again)
    assert (again.items, again.behind_items) == (state.items, state.behind_items)

    # A checkpoint (the start of a new segment) rebuilds it too, pointing into the old log.
    log = storage.logs["q"]
    checkpoint_at = len(log)
    log.extend(state.snapshot())
    behind = ListBehind(log)
    from_checkpoint = QueueState("q", config, lambda r, e: None, behind=behind)
    replay_into(from_checkpoint, behind, checkpoint_at)
    same(state, from_checkpoint)
    rest = [present(from_checkpoint.remove(0)).data for _ in range(70)]
    assert rest == [b"m%08d" % i for i in range(30, 100)]
    assert from_checkpoint.items == 0 and from_checkpoint.remove(0) is None


def test_read_behind_with_open_reads_flush_and_limits() -> None:
    coll, storage, _ = make(QueueConfig(max_memory_bytes=20, max_items=10))
    for i in range(10):
        coll.add("q", item(b"x%d" % i), 0)
    with pytest.raises(QueueFull):  # limits count items behind too
        coll.add("q", item(b"over"), 0)
    s = Session(coll, max_open_reads=3)
    assert [present(s.get("q", OPEN, 0)).data for _ in range(3)] == [b"x0", b"x1", b"x2"]
    state = coll.queue("q")
    assert state.flush() == 7
    assert state.items == 0 and state.behind_items == 0
    coll.add("q", item(b"after"), 0)
    s.release_all()
    assert [i.data for i in state.ready] == [b"x0", b"x1", b"x2", b"after"]
    same(state, replayed(storage, "q", QueueConfig(max_memory_bytes=20)))


def test_a_full_fanout_child_misses_the_copy_without_refusing_the_set() -> None:
    coll, _, _ = make(**{"feed+small": QueueConfig(max_items=1)})
    coll.queue("feed+small")
    coll.queue("feed+big")
    coll.add("feed", item(b"one"), 0)
    coll.add("feed", item(b"two"), 0)
    assert [i.data for i in coll.queue("feed").ready] == [b"one", b"two"]
    assert [i.data for i in coll.queue("feed+big").ready] == [b"one", b"two"]
    assert [i.data for i in coll.queue("feed+small").ready] == [b"one"]
    assert coll.queue("feed+small").stats.discarded == 1


def test_a_read_left_open_on_a_deleted_queue_cannot_touch_the_new_queue_of_that_name() -> None:
    coll, _, _ = make()
    coll.add("q", item(b"old"), 0)
    a, b = Session(coll), Session(coll)
    assert present(a.get("q", OPEN, 0)).data == b"old"
    coll.delete("q")  # an admin's delete: A's session still holds its xid
    coll.add("q", item(b"new"), 0)
    assert present(b.get("q", OPEN, 0)).data == b"new"
    # A's close is about a read that went with the old queue: it must not confirm B's.
    assert a.get("q", CLOSE, 0) is None
    assert [r.item.data for r in coll.queue("q").open_reads.values()] == [b"new"]
    b.get("q", ABORT, 0)
    assert [i.data for i in coll.queue("q").ready] == [b"new"]
    # The close dropped the forgotten read, so A is free to open one on the new queue.
    assert present(a.get("q", OPEN, 0)).data == b"new"


class FailingStorage(MemoryStorage):
    """MemoryStorage whose named queues' journals fail as a disk that cannot write."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()

    def log_for(self, name: str) -> LogFn:
        inner = super().log_for(name)

        def append(record: Record, essential: bool) -> None:
            if name in self.failing:
                raise JournalWriteFailed(f"{name}: write failed")
            inner(record, essential)

        return append


def test_fanout_child_whose_journal_fails_misses_its_copy_and_the_set_stands() -> None:
    storage = FailingStorage()
    coll = QueueCollection(storage)
    for child in ("feed+a", "feed+b"):
        coll.queue(child)
    storage.failing = {"feed+b"}
    coll.add("feed", item(b"x"), 0)
    assert [i.data for i in coll.queue("feed").ready] == [b"x"]
    assert [i.data for i in coll.queue("feed+a").ready] == [b"x"]
    assert not coll.queue("feed+b").ready
    assert coll.queue("feed+b").stats.discarded == 1


def test_fanout_whose_parent_journal_fails_leaves_no_copy_anywhere() -> None:
    # The client sees an error and retries: a copy left in a child would be a duplicate.
    storage = FailingStorage()
    coll = QueueCollection(storage)
    for child in ("feed+a", "feed+b"):
        coll.queue(child)
    storage.failing = {"feed"}
    with pytest.raises(JournalWriteFailed):
        coll.add("feed", item(b"x"), 0)
    assert all(not coll.queue(n).ready for n in ("feed", "feed+a", "feed+b"))
