"""Power cuts: the journal on a file system that keeps only what was fsynced.

A kill -9 leaves everything the process wrote in the page cache; a power cut keeps only what
an fsync (of the file, and of the directory for its name) made durable. PowerCutFiles cuts the
power at a random operation of a random workload (sets and gets on two queues, read-behind,
segment switches with their checkpoints, idle files closed), then the journal restarts on what
survived, as the server does, writes and fsyncs a few more items, and loses power again: a
restart must leave its journal fit for the next one. Seeded, so every failure replays.

What must hold: with `fsync always`, nothing acknowledged is lost, and the directory never
names a segment that is not there (recovery and draining never fail); with `sync_reads` too,
no acknowledged read comes back either, while without it (the default) a get answered before
its fsync may come back, once and in its place, and only that: never a loss, a duplicate or a
damaged journal. With any policy, a queue that lost acknowledged items is named in a warning
at restart.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

import pytest
from fake_files import PowerCut, PowerCutFiles

from kestrelq.journal.item import Item
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.store import JournalStore, StoreLimits
from kestrelq.queue.collection import QueueCollection
from kestrelq.queue.config import QueueConfig

DATA = Path("/power-cut/data")  # never touched: PowerCutFiles keeps it in memory
QUEUES = ("a", "b")
# Small segments and a small memory window: segment switches and read-behind every few steps.
LIMITS = StoreLimits(reserve_bytes=0, segment_bytes=1024, idle_compact_bytes=256)
QUEUE_CONFIG = QueueConfig(max_memory_bytes=96)
SEEDS = 60
STEPS = 80


SYNC_READS = "always+sync_reads"


def fsync_policy(policy: str) -> FsyncPolicy:
    if policy == SYNC_READS:
        return FsyncPolicy("always", sync_reads=True)
    return FsyncPolicy.parse(policy)


def open_journal(files: PowerCutFiles, policy: str) -> tuple[JournalStore, QueueCollection]:
    """Open the data directory and replay every queue, as the server's start-up does."""
    store = JournalStore(
        DATA, lambda name: fsync_policy(policy), LIMITS, batch_writes=True, files=files
    )
    store.open()
    coll = QueueCollection(store, QUEUE_CONFIG)
    for name in store.existing_names():
        state = coll.queue(name, check=False)
        for record in store.recover(name):
            state.apply(record)
        if state.behind_items:
            store.journal(name).verify_behind()
        for xid in state.reopened_xids():
            state.unremove(xid)
    for name in list(store.needs_rotation):
        rotate(store, coll, name, force=True)
    store.sync_all()
    return store, coll


def rotate(store: JournalStore, coll: QueueCollection, name: str, force: bool = False) -> None:
    """A new segment when the server would start one (Server._rotate)."""
    state = coll.existing(name)
    journal = store.journals.get(name)
    if state is None or journal is None:
        return
    empty = not state.items and not state.open_reads
    behind = bool(state.behind_items)
    if force or journal.should_rotate(empty, behind):
        journal.rotate(state.snapshot(), behind)


class Run:
    """One workload until the power goes; what was acknowledged, per queue."""

    def __init__(self, seed: int, policy: str, cut_after: int = -1) -> None:
        self.rng = random.Random(seed)  # the workload's: the same for the same seed
        self.policy = policy
        self.acked_sets: dict[str, list[bytes]] = {q: [] for q in QUEUES}
        self.sent: dict[str, list[bytes]] = {q: [] for q in QUEUES}  # every set tried
        self.handed_out: dict[str, set[bytes]] = {q: set() for q in QUEUES}
        self.acked_gets: dict[str, set[bytes]] = {q: set() for q in QUEUES}
        self.files = PowerCutFiles(cut_after=cut_after)

    def work(self) -> None:
        store, coll = open_journal(self.files, self.policy)
        rng = self.rng
        now = 1_000
        for step in range(STEPS):
            sets: list[tuple[str, bytes]] = []
            gets: list[tuple[str, bytes]] = []
            for _ in range(rng.randint(1, 6)):
                name = rng.choice(QUEUES)
                if rng.random() < 0.6:
                    data = b"%s-%05d-" % (name.encode(), len(self.sent[name]))
                    data += b"x" * rng.randint(0, 40)
                    self.sent[name].append(data)
                    coll.add(name, Item(data, 0, now), now)
                    sets.append((name, data))
                else:
                    item = coll.queue(name).remove(now)
                    if item is not None:
                        self.handed_out[name].add(item.data)
                        gets.append((name, item.data))
            # The replies go out once the records are written and, for `always`, fsynced; by
            # default the gets' replies do not wait: their records are fsynced by the next
            # group commit (a set's) or the server's tick (here every third step).
            store.write_pending()
            if self.policy == "always" and not sets:
                self.acknowledge(gets)
                gets = []
                if step % 3 == 0:
                    store.sync_always()
            elif self.policy in ("always", SYNC_READS):
                store.sync_always()
            elif self.policy != "never" and step % 3 == 0:
                fds, _ = store.take_dirty(periodic=True)
                store.fsync_fds(fds)
            for name, data in sets:
                self.acked_sets[name].append(data)
            self.acknowledge(gets)
            for name in QUEUES:
                rotate(store, coll, name)
            store.tick()
            now += 100
        store.close()

    def acknowledge(self, gets: list[tuple[str, bytes]]) -> None:
        for name, data in gets:
            self.acked_gets[name].add(data)


def drain(coll: QueueCollection, name: str) -> list[bytes]:
    state = coll.existing(name)
    got = []
    while state is not None and (item := state.remove(10**9)) is not None:
        got.append(item.data)
    return got


def choose_cut(seed: int, policy: str) -> int:
    """The operation to cut the power at: run the workload once to see its operations, pick
    a kind of operation, then one of them (so that rare ones, a rename, get their share)."""
    dry = Run(seed, policy)
    dry.work()
    rng = random.Random(f"cut-{seed}")
    kind = rng.choice(sorted(set(dry.files.trace)))
    return rng.choice([i for i, op in enumerate(dry.files.trace) if op == kind]) + 1


def power_cut_run(seed: int, policy: str, caplog: pytest.LogCaptureFixture) -> tuple[str, int]:
    """One run cut at a random operation: (the operation, acknowledged gets that came back)."""
    run = Run(seed, policy, cut_after=choose_cut(seed, policy))
    with pytest.raises(PowerCut):
        run.work()
    caplog.clear()
    survivors = run.files.after_power_cut(random.Random(f"survivors-{seed}"))
    with caplog.at_level(logging.WARNING):
        store, coll = open_journal(survivors, policy)
        recovered = {name: drain(coll, name) for name in QUEUES}
    # Life goes on after the restart: what is written and fsynced now must survive the next
    # power cut, whatever the first one left behind (a file of zeros with no header, say).
    after = {name: [b"%s-after-%d" % (name.encode(), i) for i in range(3)] for name in QUEUES}
    for name, datas in after.items():
        for data in datas:
            coll.add(name, Item(data, 0, 10**9), 10**9)
    store.sync_all()
    if policy == "never":
        survivors.sync()  # nothing in the store fsyncs a `never` journal: the machine's sync(1)
    again = survivors.after_power_cut(random.Random(f"again-{seed}"))
    store, coll = open_journal(again, policy)
    for name in QUEUES:
        assert drain(coll, name) == after[name], f"seed {seed}: {name} after the second restart"
    store.close()

    came_back = 0
    for name in QUEUES:
        got = recovered[name]
        assert len(got) == len(set(got)), f"{name}: an item came back twice"
        assert set(got) <= set(run.sent[name]), f"{name}: an item nobody sent"
        order = [run.sent[name].index(data) for data in got]
        assert order == sorted(order), f"{name}: out of FIFO order"
        lost = [d for d in run.acked_sets[name] if d not in run.handed_out[name] and d not in got]
        back = run.acked_gets[name] & set(got)
        came_back += len(back)
        if policy in ("always", SYNC_READS):
            assert lost == [], f"seed {seed}: {name} lost acknowledged items {lost[:3]}"
        if policy == SYNC_READS:
            assert not back, f"seed {seed}: {name} gave out {sorted(back)[:3]} again"
        elif lost:
            # Lost without a word is what must not happen: the queue's journal is named.
            named = [r for r in caplog.records if f"/{name}." in r.getMessage()]
            assert named, f"seed {seed}: {name} lost {len(lost)} items and nothing said so"
    return run.files.cut_at, came_back


@pytest.mark.parametrize("policy", ["always", SYNC_READS, "100", "never"])
def test_a_power_cut_at_any_moment(policy: str, caplog: pytest.LogCaptureFixture) -> None:
    runs = [power_cut_run(seed, policy, caplog) for seed in range(SEEDS)]
    cut_at = Counter(op for op, _ in runs)
    if policy == "always":
        # The reads' column of the promise: the model did cut the power after a get was
        # answered and before its fsync, and the message came back (a redelivery).
        assert sum(back for _, back in runs), "no answered get was ever unsynced at a cut"
    # The cuts fell everywhere, segment switches included: creating the new segment, its
    # checkpoint written and fsynced, the rename, the old segments unlinked.
    for op in ("open_new", "write", "rename", "unlink", "writev", "fsync", "open_append"):
        assert cut_at[op], f"no cut fell in {op}: {dict(cut_at)}"


def test_the_model_shares_a_position_between_a_descriptor_and_its_dup() -> None:
    # As dup(2): one file description, so a write through either goes on where the other's
    # left off (the ledger fsyncs through dups of the descriptors the journals write with).
    files = PowerCutFiles()
    fd = files.open_append(DATA / "q.0000000001.kqj")
    dup = files.dup(fd)
    files.write(dup, b"ab")
    files.write(fd, b"cd")
    files.seek(dup, 1)
    files.write(fd, b"X")
    assert files.names["q.0000000001.kqj"].data == b"aXcd"
