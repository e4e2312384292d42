"""Commands a client can send, as data."""

from __future__ import annotations

from dataclasses import dataclass

from kestrelq.queue.collection import GetOptions


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes  # exactly as sent: echoed in the VALUE line
    queue: str
    options: GetOptions


@dataclass(frozen=True, slots=True)
class Set:
    queue: str
    flags: int
    exptime: int
    data: bytes
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    queue: str
    noreply: bool = False


@dataclass(frozen=True, slots=True)
class Flush:
    queue: str


@dataclass(frozen=True, slots=True)
class FlushAll:
    pass


@dataclass(frozen=True, slots=True)
class FlushExpired:
    queue: str


@dataclass(frozen=True, slots=True)
class FlushAllExpired:
    pass


@dataclass(frozen=True, slots=True)
class Stats:
    pass


@dataclass(frozen=True, slots=True)
class DumpStats:
    queues: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Version:
    pass


@dataclass(frozen=True, slots=True)
class Reload:
    pass


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Monitor:
    queue: str
    seconds: int
    max_items: int  # 0: up to the open-read limit


@dataclass(frozen=True, slots=True)
class Confirm:
    queue: str
    count: int


Command = (
    Get
    | Set
    | Delete
    | Flush
    | FlushAll
    | FlushExpired
    | FlushAllExpired
    | Stats
    | DumpStats
    | Version
    | Reload
    | Shutdown
    | Quit
    | Monitor
    | Confirm
)
