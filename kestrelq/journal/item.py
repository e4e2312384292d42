"""One queued message: what the queue holds and what an ADD record carries."""

from __future__ import annotations

from kestrelq.value import value


@value
class Item:
    """A message as the queue holds it.

    `expires_ms` is an absolute Unix time in ms, 0 for never. `deliveries` counts how many
    times the item was handed out by a reliable read (`/open`) without being confirmed.
    """

    data: bytes
    flags: int = 0
    added_ms: int = 0
    expires_ms: int = 0
    deliveries: int = 0

    def delivered(self) -> Item:
        """This item, handed out once more (dataclasses.replace is slow on the hot path)."""
        return Item(self.data, self.flags, self.added_ms, self.expires_ms, self.deliveries + 1)

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms != 0 and self.expires_ms < now_ms
