"""What the server and its connections share, in one place (as uvicorn's ServerState).

`Server` builds a `ServerState` and hands it to every connection; a connection sees the server
only through it, so `connection.py` never imports `server.py`. The state holds no event-loop
machinery beyond `call_soon`: blocked readers are woken, and fsync rounds scheduled, once the
current command is done.

Blocked readers: a connection parked in `get q/t=...` or `monitor` waits in the FIFO of its
queue. When the queue gains an item (`notify`, called by the queue core), the queue is marked,
and once the event loop is free the waiters are offered items in order. A waiter that takes
nothing stays first in line if it still waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import Event
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kestrelq.journal.store import JournalStore
from kestrelq.protocol.commands import ServerStatus
from kestrelq.queue.collection import QueueCollection
from kestrelq.server.budget import ByteBudget
from kestrelq.server.config import ServerConfig
from kestrelq.server.security import Security


class Waiter(Protocol):
    """A connection blocked on a queue (QueueProtocol)."""

    def wake(self) -> bool:
        """An item arrived: True if it took one."""
        ...

    @property
    def waiting(self) -> bool:
        """Still blocked and connected (after a wake that took nothing)."""
        ...


class Connection(Waiter, Protocol):
    """What the server asks of a connection (QueueProtocol)."""

    def shutdown(self) -> None:
        """Answer a parked read, write what is owed, then close."""

    def abort(self) -> None:
        """Drop the connection without a word (its open reads go back when it is gone)."""

    def close_now(self) -> None:
        """Drop the connection and return its open reads now."""

    def check_timeouts(self, now: float) -> str | None:
        """Why the connection should be closed at event-loop time `now`, or None."""
        ...


@dataclass(slots=True)
class ConnectionCounters:
    total_connections: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    timed_out_connections: int = 0


class Waiters:
    """Blocked readers per queue, first come first served."""

    def __init__(self) -> None:
        self._by_queue: dict[str, deque[Waiter]] = {}
        self._dirty: set[str] = set()
        self._scheduled = False

    def count(self, queue: str) -> int:
        return len(self._by_queue.get(queue, ()))

    def add(self, queue: str, waiter: Waiter) -> None:
        self._by_queue.setdefault(queue, deque()).append(waiter)

    def remove(self, queue: str, waiter: Waiter) -> None:
        waiting = self._by_queue.get(queue)
        if waiting is not None:
            with contextlib.suppress(ValueError):
                waiting.remove(waiter)
            if not waiting:
                del self._by_queue[queue]

    def notify(self, queue: str) -> None:
        """A queue gained an item: hand it to a blocked reader once the current command is done."""
        if queue not in self._by_queue:
            return
        self._dirty.add(queue)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for queue in dirty:
            waiting = self._by_queue.get(queue)
            while waiting:
                waiter = waiting.popleft()
                if not waiter.wake():
                    # Nothing left for it (or it vanished): first in line again, if alive.
                    if waiter.waiting:
                        waiting.appendleft(waiter)
                    break
            if queue in self._by_queue and not self._by_queue[queue]:
                del self._by_queue[queue]


@dataclass(eq=False)
class ServerState:
    """The server as its connections see it."""

    config: ServerConfig
    collection: QueueCollection
    store: JournalStore
    security: Security
    waiters: Waiters
    clock: Callable[[], float]
    # Set by the server: stop gracefully (`shutdown`), re-read the settings (`reload`), and
    # run a group fsync once the current turn of the event loop is done (`sync_soon`) or
    # at once (`sync_now`, for a connection whose transport closes when it returns).
    request_shutdown: Callable[[str], None]
    reload: Callable[[], None]
    sync_soon: Callable[[], None]
    sync_now: Callable[[], None]
    # STATUS: what this server takes now (server/status.py), and how a `status <new>` is
    # saved and applied (by the server: the file first, then this field).
    set_status: Callable[[ServerStatus], None]
    status: ServerStatus = ServerStatus.UP
    started_s: float = 0.0
    shutting_down: bool = False
    connections: set[Connection] = field(default_factory=set)
    counters: ConnectionCounters = field(default_factory=ConnectionCounters)
    pending: ByteBudget = field(default_factory=lambda: ByteBudget(0))
    # By its bare name: Debian's mypyc (1.0, which compiles the images' hot path) looks a
    # dataclass field's class up under that name in the module's globals.
    all_closed: Event = field(default_factory=Event)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.all_closed.set()
