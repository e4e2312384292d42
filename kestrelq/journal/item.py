"""One queued message: what the queue holds and what an ADD record carries."""

from __future__ import annotations

from typing import ClassVar, Final


class Item:
    """A message as the queue holds it.

    `expires_ms` is an absolute Unix time in ms, 0 for never. `deliveries` counts how many
    times the item was handed out by a reliable read (`/open`) without being confirmed.

    Written out rather than `@value`: every set makes one, and a class with its own
    `__init__` is one mypyc compiles to a native class with a native constructor (about 8x
    cheaper to build than a dataclass, whose generated `__init__` stays interpreted). `Final`
    keeps it immutable for mypy (and at run time too when a recent mypyc compiled it); eq,
    hash and the match arguments are a dataclass's.
    """

    __match_args__: Final = (
        "data",
        "flags",
        "added_ms",
        "expires_ms",
        "deliveries",
    )
    # Spelt out, not computed from __match_args__: Debian's mypyc 1.0.1 has no Final class
    # attribute in the class's namespace while the body runs (KeyError at import).
    __slots__: ClassVar[tuple[str, ...]] = (
        "added_ms",
        "data",
        "deliveries",
        "expires_ms",
        "flags",
    )

    def __init__(
        self,
        data: bytes,
        flags: int = 0,
        added_ms: int = 0,
        expires_ms: int = 0,
        deliveries: int = 0,
    ) -> None:
        self.data: Final = data
        self.flags: Final = flags
        self.added_ms: Final = added_ms
        self.expires_ms: Final = expires_ms
        self.deliveries: Final = deliveries

    def _fields(self) -> tuple[bytes, int, int, int, int]:
        return (self.data, self.flags, self.added_ms, self.expires_ms, self.deliveries)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Item:
            return NotImplemented
        assert isinstance(other, Item)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[type[Item], tuple[bytes, int, int, int, int]]:
        # copy and pickle: compiled, a native class has no default way to rebuild itself.
        return (Item, self._fields())

    def __repr__(self) -> str:
        return (
            f"Item(data={self.data!r}, flags={self.flags}, added_ms={self.added_ms}, "
            f"expires_ms={self.expires_ms}, deliveries={self.deliveries})"
        )

    def delivered(self) -> Item:
        """This item, handed out once more."""
        return Item(self.data, self.flags, self.added_ms, self.expires_ms, self.deliveries + 1)

    def with_deliveries(self, deliveries: int) -> Item:
        """This item with its delivery count set (a snapshot's, a dead letter's)."""
        return Item(self.data, self.flags, self.added_ms, self.expires_ms, deliveries)

    def with_expiry(self, expires_ms: int, deliveries: int | None = None) -> Item:
        """This item with a new expiry (a cap, or none once moved), and maybe a new count."""
        count = self.deliveries if deliveries is None else deliveries
        return Item(self.data, self.flags, self.added_ms, expires_ms, count)

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms != 0 and self.expires_ms < now_ms
