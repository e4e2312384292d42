"""Queue names: what is allowed, checked before a name reaches the file system or the wire."""

from __future__ import annotations

import re

from kestrelq.errors import InvalidQueueName

MAX_NAME_BYTES = 128

# Letters, digits, `_` and `-`; `+` only as the one fanout separator (`parent+child`). No `.`,
# `/`, `~` or NUL can ever appear, so a name is always a plain file name inside the data dir.
_PART = r"[A-Za-z0-9_-]+"
_NAME = re.compile(rf"{_PART}(?:\+{_PART})?")


def validate(name: str) -> str:
    """Return `name` if it is a legal queue name, else raise InvalidQueueName."""
    if len(name) > MAX_NAME_BYTES:
        raise InvalidQueueName(f"queue name longer than {MAX_NAME_BYTES} bytes")
    if _NAME.fullmatch(name) is None:
        raise InvalidQueueName("bad queue name")
    return name


def decode(raw: bytes) -> str:
    """Decode a queue name taken off the wire and validate it."""
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidQueueName("bad queue name") from None
    return validate(name)


def fanout_parent(name: str) -> str | None:
    """`parent` for a fanout child `parent+child`, else None."""
    parent, plus, _ = name.partition("+")
    return parent if plus else None
