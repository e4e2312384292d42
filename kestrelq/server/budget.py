"""A server-wide budget for bytes of data blocks still arriving.

A `set` whose data block does not come with its command line holds the bytes received so far
in its connection's buffer until the block is complete. Without a bound, eight connections each
sending 60 MiB of an unfinished 64 MiB set cost half a gigabyte, and a thousand of them more
memory than any host has. So a connection that starts receiving a block takes its declared size
from this budget first; when the budget cannot cover it, the connection stops reading (the rest
stays in the kernel's socket buffers and, past those, in the client) until blocks finish and
give their bytes back. Waiters are served in order. One block is always admitted when nothing
else holds the budget, so a limit below max_item_bytes slows big sets but never stops them.

Blocks that arrive with their command line in one read never touch the budget: they are parsed
at once, and what a single read can hold is bounded by the transport.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self._waiting: deque[tuple[int, Callable[[], None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def try_take(self, size: int) -> bool:
        """Take `size` bytes if they fit (or if nothing is taken); False if they do not."""
        if self._waiting or (self.taken and self.taken + size > self.limit):
            return False  # first come, first served: no overtaking the ones in line
        self.taken += size
        return True

    def wait(self, size: int, granted: Callable[[], None]) -> None:
        """Call `granted()` once `size` bytes have been taken for the caller."""
        self._waiting.append((size, granted))
        self._grant()

    def cancel(self, granted: Callable[[], None]) -> None:
        self._waiting = deque(w for w in self._waiting if w[1] != granted)
        self._grant()

    def give_back(self, size: int) -> None:
        self.taken -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            size, granted = self._waiting[0]
            if self.taken and self.taken + size > self.limit:
                return
            self._waiting.popleft()
            self.taken += size
            granted()
