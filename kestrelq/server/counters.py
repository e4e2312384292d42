"""Each queue's counters, kept across restarts in `counters.json` beside the journals.

Replay rebuilds a queue's items, not its history: an item dead-lettered, expired or fetched
left only a REMOVE behind, and a new segment's checkpoint drops even the adds. So the counters
of `QueueStats` (items put, got, expired, dead-lettered, discarded...) would start again from
what the journal happens to hold. The server writes them to this small file instead: at most
once a second and only when a command or the housekeeping may have changed one, and at
shutdown; at start it puts them back on the queues it recovered.

Only the numbers are read in the event loop thread, where the queues change (a C-level
attrgetter per queue); the dict, the JSON and the write run in a worker thread, one save at a
time (server.py). Built in the loop, 50,000 queues stalled every client for 257 ms a second.

The file is written to a temporary name and renamed, without an fsync: it survives a kill -9
(the page cache does), and a power cut may take the last seconds of counts back. A crash loses
at most the last second. A damaged or unreadable file is named in a warning and ignored: the
counters then start from what replay found, and no item is affected, since nothing but these
figures comes from it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields
from operator import attrgetter
from pathlib import Path

from kestrelq.queue.collection import QueueCollection
from kestrelq.queue.state import QueueStats

logger = logging.getLogger(__name__)

FILENAME = "counters.json"
SAVE_EVERY_S = 1.0
_VERSION = 1
FIELDS = tuple(f.name for f in fields(QueueStats))

Saved = dict[str, dict[str, int]]
# Each queue's counters in the order of FIELDS.
Snapshot = dict[str, tuple[int, ...]]

_read_all = attrgetter(*FIELDS)


def snapshot(collection: QueueCollection) -> Snapshot:
    """The counters as they are now (for the loop thread: nothing but reading ints)."""
    return {name: _read_all(state.stats) for name, state in collection.queues.items()}


def save(data_dir: Path, counts: Snapshot) -> None:
    """Replace the file with `counts` (OSError if it cannot be written)."""
    queues = {name: dict(zip(FIELDS, values, strict=True)) for name, values in counts.items()}
    path = data_dir / FILENAME
    tmp = path.with_name(FILENAME + ".tmp")
    tmp.write_text(json.dumps({"version": _VERSION, "queues": queues}, separators=(",", ":")))
    os.replace(tmp, path)


def load(data_dir: Path) -> Saved:
    """What the file holds; {} (with a warning) when it is missing, unreadable or damaged."""
    path = data_dir / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("%s: ignored, queue counters start from the journals: %s", path, exc)
        return {}
    queues = data.get("queues") if isinstance(data, dict) else None
    if not isinstance(queues, dict) or data.get("version") != _VERSION:
        logger.warning("%s: not a counters file of this version: ignored", path)
        return {}
    return {
        name: {k: v for k, v in counts.items() if k in FIELDS and _count(v)}
        for name, counts in queues.items()
        if isinstance(counts, dict)
    }


def restore(collection: QueueCollection, saved: Saved) -> int:
    """Put saved counters back on the queues that exist; returns how many queues got theirs."""
    restored = 0
    for name, counts in saved.items():
        state = collection.existing(name)
        if state is None:
            continue
        for key, value in counts.items():
            setattr(state.stats, key, value)
        restored += 1
    return restored


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
