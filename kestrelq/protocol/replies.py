"""Reply encoding: pure functions from values to the exact bytes on the wire."""

from __future__ import annotations

from collections.abc import Iterable

STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
END = b"END\r\n"
DELETED = b"DELETED\r\n"
FLUSHED_ALL = b"Flushed all queues.\r\n"
RELOADED = b"Reloaded config.\r\n"
ERROR = b"ERROR\r\n"
_TRAILER = b"\r\nEND\r\n"


def value(key: bytes, flags: int, data: bytes) -> list[bytes]:
    """A get hit as separate chunks, so a large item is written without being copied."""
    return [b"VALUE %s %d %d\r\n" % (key, flags, len(data)), data, _TRAILER]


def value_joined(key: bytes, flags: int, data: bytes) -> bytes:
    """The same reply as `value`, in one piece (for a small item: one copy beats three parts)."""
    return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, flags, len(data), data)


def count(n: int) -> bytes:
    return b"%d\r\n" % n


def version(text: str) -> bytes:
    return b"VERSION %s\r\n" % text.encode()


def status(word: str) -> bytes:
    """The answer to a bare `status`: the status word alone (`UP`)."""
    return b"%s\r\n" % word.encode()


def error(word: str, reason: str) -> bytes:
    # A reason never contains CR or LF: it comes from our own messages, but be strict.
    clean = reason.replace("\r", " ").replace("\n", " ")
    return f"{word} {clean}\r\n".encode("ascii", "replace") if clean else f"{word}\r\n".encode()


def stat_lines(lines: Iterable[tuple[str, object]]) -> bytes:
    """`STAT name value` lines, without the END (a long reply is sent in parts)."""
    return b"".join(f"STAT {k} {v}\r\n".encode() for k, v in lines)


def stats(lines: Iterable[tuple[str, object]]) -> bytes:
    return stat_lines(lines) + END


def dump_stats_block(name: str, pairs: Iterable[tuple[str, object]]) -> bytes:
    """Kestrel's brace format for one queue: `queue 'q' {`, `  key=value` lines, `}`."""
    lines = [f"queue '{name}' {{", *(f"  {k}={v}" for k, v in pairs), "}", ""]
    return "\r\n".join(lines).encode()


def dump_stats(blocks: Iterable[tuple[str, Iterable[tuple[str, object]]]]) -> bytes:
    """Every queue's block, then END (just END when there is no such queue)."""
    return b"".join(dump_stats_block(name, pairs) for name, pairs in blocks) + END
