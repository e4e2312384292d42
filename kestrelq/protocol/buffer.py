"""A receive buffer that extracts lines and blocks without quadratic rescans."""

from __future__ import annotations

# Blocks up to this size are copied out through a bytearray slice.
_SMALL_BLOCK = 4096


class ReceiveBuffer:
    """Bytes received but not yet parsed.

    Consumed bytes are not deleted one command at a time (that would copy the rest of the
    buffer for every command of a pipelined batch); a start offset moves forward and the
    storage is compacted only when the consumed part dominates. A line search remembers how
    far it already looked, so a line arriving a byte at a time stays O(n).

    Consumed to its end, the storage is emptied at once: so `data` is empty exactly when
    nothing is buffered, which a caller checks without a call (the end of every batch).
    """

    __slots__ = ("_searched", "_start", "data")

    def __init__(self) -> None:
        self.data = bytearray()
        self._start = 0
        self._searched = 0

    def __len__(self) -> int:
        return len(self.data) - self._start

    def __iadd__(self, chunk: bytes) -> ReceiveBuffer:
        self.data += chunk
        return self

    def maybe_extract_line(self) -> bytes | None:
        """The next line without its LF (and CR), or None if no full line is buffered."""
        data = self.data
        idx = data.find(b"\n", self._searched)  # _searched >= _start, always
        if idx < 0:
            self._searched = len(data)
            return None
        start = self._start
        end = idx - 1 if idx > start and data[idx - 1] == 0x0D else idx
        line = bytes(data[start:end])
        # The two common cases of _consume_to, without the call: the line was all there was
        # (one command at a time), or more follows (a pipelined batch).
        if idx + 1 == len(data):
            data.clear()
            self._start = self._searched = 0
        elif idx < 65536:
            self._start = self._searched = idx + 1
        else:
            self._consume_to(idx + 1)
        return line

    def maybe_extract_block(self, size: int, terminator: bytes = b"") -> bytes | None:
        """Exactly `size` bytes, or None if fewer (plus the terminator) are buffered.

        The terminator that must follow the block is consumed and not returned; a
        different one raises ValueError. A big block is copied once, through a memoryview (a
        bytearray slice would copy it a second time, which costs milliseconds for 8 MiB); a
        small one through a slice, which is faster than setting up the view.
        """
        data = self.data
        start = self._start
        end = start + size
        stop = end + len(terminator)
        if len(data) < stop:
            return None
        if data[end:stop] != terminator:
            raise ValueError("block not followed by its terminator")
        if size <= _SMALL_BLOCK:
            block = bytes(data[start:end])  # two small copies beat setting up a memoryview
        else:
            with memoryview(data) as view:
                block = bytes(view[start:end])
        if stop == len(data):
            data.clear()
            self._start = self._searched = 0
        else:
            self._consume_to(stop)
        return block

    def skip(self, size: int) -> int:
        """Drop up to `size` bytes; returns how many were dropped."""
        dropped = min(size, len(self))
        self._consume_to(self._start + dropped)
        return dropped

    def _consume_to(self, offset: int) -> None:
        self._start = offset
        self._searched = offset
        if self._start == len(self.data):
            self.data.clear()
            self._start = self._searched = 0
        elif self._start > 65536 and self._start * 2 > len(self.data):
            del self.data[: self._start]
            self._searched -= self._start
            self._start = 0
