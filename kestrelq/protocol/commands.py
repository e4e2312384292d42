"""Commands a client can send, as data."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Final

from kestrelq.queue.collection import GetOptions
from kestrelq.value import value


class ServerStatus(Enum):
    """What a server takes (Kestrel 2.4's statuses, named as its STATUS command names them).

    UP takes everything; READONLY refuses writes (a server being drained: producers go
    elsewhere, workers empty it); QUIESCENT refuses reads as well (it can be stopped).
    """

    UP = "UP"
    READONLY = "READONLY"
    QUIESCENT = "QUIESCENT"


@value
class Get:
    key: bytes  # exactly as sent: echoed in the VALUE line
    queue: str
    options: GetOptions


class Set:
    """Written out rather than `@value`, as `Item` is (journal/item.py): one per set, built
    by a native constructor once compiled."""

    __match_args__: Final = ("queue", "flags", "exptime", "data", "noreply")
    # Spelt out: see Item's (journal/item.py).
    __slots__: ClassVar[tuple[str, ...]] = ("data", "exptime", "flags", "noreply", "queue")

    def __init__(
        self, queue: str, flags: int, exptime: int, data: bytes, noreply: bool = False
    ) -> None:
        self.queue: Final = queue
        self.flags: Final = flags
        self.exptime: Final = exptime
        self.data: Final = data
        self.noreply: Final = noreply

    def _fields(self) -> tuple[str, int, int, bytes, bool]:
        return (self.queue, self.flags, self.exptime, self.data, self.noreply)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Set:
            return NotImplemented
        assert isinstance(other, Set)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[type[Set], tuple[str, int, int, bytes, bool]]:
        # copy and pickle: compiled, a native class has no default way to rebuild itself.
        return (Set, self._fields())

    def __repr__(self) -> str:
        return (
            f"Set(queue={self.queue!r}, flags={self.flags}, exptime={self.exptime}, "
            f"data={self.data!r}, noreply={self.noreply})"
        )


@value
class Delete:
    queue: str
    noreply: bool = False


@value
class Flush:
    queue: str


@value
class FlushAll:
    noreply: bool = False


@value
class FlushExpired:
    queue: str


@value
class FlushAllExpired:
    pass


@value
class Stats:
    pass


@value
class DumpStats:
    queues: tuple[str, ...]


@value
class Version:
    pass


@value
class Reload:
    pass


@value
class Shutdown:
    pass


@value
class Quit:
    pass


@value
class Monitor:
    queue: str
    seconds: int
    max_items: int  # 0: up to the open-read limit


@value
class GetStatus:
    pass


@value
class SetStatus:
    status: ServerStatus


@value
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
    | GetStatus
    | SetStatus
)
