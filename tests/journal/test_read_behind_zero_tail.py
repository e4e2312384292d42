"""Items behind in a segment a kill left with its zero tail, read on into the newer segment.

A new segment is renamed into place before the old one is closed, and the close is what gives
the old one's zeros (written ahead of its records) back: a kill between the two leaves an old
segment, still holding items behind, that ends in zeros. Those zeros are its clean end, and the
items behind go on in the newer segment.
"""

from __future__ import annotations

from pathlib import Path

from kestrelq.journal.files import Files
from kestrelq.journal.item import Item
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.store import JournalStore, StoreLimits
from kestrelq.queue.collection import QueueCollection
from kestrelq.queue.config import QueueConfig
from kestrelq.queue.state import QueueState

# 1000-byte items against a 5-item memory window and 12-item segments: most items are behind,
# and they span several segments.
LIMITS = StoreLimits(reserve_bytes=0, segment_bytes=12_000)
CONFIG = QueueConfig(max_memory_bytes=5_000)
COUNT = 60


def payload(i: int) -> bytes:
    return b"%06d" % i + b"." * 994


class KilledAfterRename(Files):
    """Remembers every journal file's bytes at the first rename of a segment into place after
    `armed`: what the page cache, and so the disk, holds when the process is killed there."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.at_kill: dict[Path, bytes] | None = None

    def rename(self, src: Path, dst: Path) -> None:
        super().rename(src, dst)
        if self.armed and self.at_kill is None:
            self.at_kill = {p: p.read_bytes() for p in dst.parent.glob("*.kqj")}


def started(data_dir: Path, files: Files) -> tuple[JournalStore, QueueState]:
    """A store and its queue `q` as the server starts them (replay, then verify behind)."""
    store = JournalStore(
        data_dir, lambda name: FsyncPolicy("never"), LIMITS, batch_writes=True, files=files
    )
    store.open()
    found = store.existing_names()
    state = QueueCollection(store, CONFIG).queue("q", check=False)
    if "q" not in found:
        return store, state
    for record in store.recover("q"):
        state.apply(record)
    if state.behind_items:
        store.journal("q").verify_behind()
    return store, state


def test_items_behind_in_a_segment_killed_with_its_zeros_drain_in_order(
    tmp_path: Path,
) -> None:
    files = KilledAfterRename()
    store, state = started(tmp_path, files)
    journal = store.journal("q")
    for i in range(COUNT):
        state.add(Item(payload(i), 0, 1, 0, 0), 0)
        store.write_pending()
        if journal.should_rotate(empty=False, behind=True):
            files.armed = i >= COUNT // 2  # once items behind span segments
            assert journal.rotate(state.snapshot(), behind=True)
    at_kill = files.at_kill
    assert at_kill is not None
    store.close()
    (tmp_path / ".clean").unlink()  # a kill leaves no clean-stop mark
    for path in tmp_path.glob("*.kqj"):
        path.unlink()
    for path, data in at_kill.items():
        path.write_bytes(data)
    *older, _ = sorted(at_kill)
    behind_from = at_kill[older[-1]]
    assert len(behind_from.rstrip(b"\0")) < len(behind_from)  # it kept its zeros

    store, state = started(tmp_path, Files())
    try:
        assert state.behind_items
        killed_at = state.items
        # Items added after the restart are behind too, in the newest segment: reading them
        # reads through the old segment's zeros.
        for i in range(killed_at, killed_at + 3):
            state.add(Item(payload(i), 0, 1, 0, 0), 0)
        store.write_pending()
        got = []
        while (item := state.remove(0)) is not None:
            got.append(int(item.data[:6]))
            store.write_pending()
        assert got == list(range(killed_at + 3))
    finally:
        store.close()
