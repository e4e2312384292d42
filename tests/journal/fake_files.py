"""File layers a journal test puts behind the journal's `Files` seam."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kestrelq.journal.files import Buffer, Files

WritevFn = Callable[[int, Sequence[Buffer]], int]
FallocateFn = Callable[[int, int, int], None]


class FilesWith(Files):
    """The real file system, with `writev` and/or `fallocate` replaced by a test's function."""

    def __init__(self, writev: WritevFn | None = None, fallocate: FallocateFn | None = None):
        self.writev_fn = writev
        self.fallocate_fn = fallocate

    def writev(self, fd: int, parts: Sequence[Buffer]) -> int:
        if self.writev_fn is None:
            return super().writev(fd, parts)
        return self.writev_fn(fd, parts)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if self.fallocate_fn is None:
            super().fallocate(fd, offset, length)
        else:
            self.fallocate_fn(fd, offset, length)
