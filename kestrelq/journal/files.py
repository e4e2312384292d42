"""Every disk operation the journal makes, behind one object.

Theory of operation
-------------------
The journal's promises are about what survives a crash: a record is on disk before its reply,
a failed write leaves no half record, the directory never names a segment that is not there.
Those depend on the exact order of writes, fsyncs, renames and directory fsyncs, and no real
file system lets a test stop between two of them. So the journal never calls `os` for a disk
operation: it calls `Files`, and a test can hand it another implementation (one that fails
with ENOSPC or EIO at a chosen call, or one that remembers what each fsync made durable and
then "loses power").

The methods are the system calls, one to one, with the errors the system calls raise
(OSError with an errno). Nothing here retries, logs or decides: that is the caller's job, so
a fake cannot change behaviour by accident. `fallocate` is Linux's with FALLOC_FL_KEEP_SIZE;
where libc has none it raises EOPNOTSUPP, as a file system without support does.

Segments are opened without O_APPEND: the journal writes at its own end, which is not the
file's end while zeros are written ahead of it (`zero_fill`, see the writer's rule 2), and
puts the descriptor's position there with `seek`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

_FALLOC_FL_KEEP_SIZE = 1
_ZERO_CHUNK_BYTES = 1 << 20

Buffer = bytes | bytearray | memoryview


def _load_fallocate() -> Callable[[int, int, int], None] | None:
    """fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) from libc, None where there is none.

    os.posix_fallocate would grow the file, and appends would land after the zeros; KEEP_SIZE
    reserves the blocks and leaves the size (where O_APPEND writes) alone.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int

    def fallocate(fd: int, offset: int, length: int) -> None:
        if func(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return fallocate


fallocate_keep_size = _load_fallocate()


class Files:
    """The real file system (see the module's docstring for why this is a seam)."""

    # -- descriptors -----------------------------------------------------------------------

    def open_append(self, path: Path, create: bool = True) -> int:
        """A segment opened for writing at its end (created, mode 0644, if `create`); the
        caller `seek`s to the journal's end (not O_APPEND: see the module)."""
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        return os.open(path, flags, 0o644)

    def open_new(self, path: Path) -> int:
        """A file created empty (or emptied) for writing, mode 0644."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def open_dir(self, path: Path) -> int:
        """The directory itself, for fsync after a create, rename or unlink in it."""
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    # -- writing ---------------------------------------------------------------------------

    def writev(self, fd: int, parts: Sequence[Buffer]) -> int:
        return os.writev(fd, parts)

    def write(self, fd: int, data: Buffer) -> int:
        return os.write(fd, data)

    def seek(self, fd: int, offset: int) -> None:
        os.lseek(fd, offset, os.SEEK_SET)

    def zero_fill(self, fd: int, offset: int, length: int) -> None:
        """Write `length` zero bytes at `offset` (pwrite: the descriptor's position stays)."""
        zeros = bytes(min(length, _ZERO_CHUNK_BYTES))
        end = offset + length
        while offset < end:
            offset += os.pwrite(fd, memoryview(zeros)[: end - offset], offset)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve blocks from `offset` on without changing the file's size."""
        if fallocate_keep_size is None:
            raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
        fallocate_keep_size(fd, offset, length)

    @property
    def can_fallocate(self) -> bool:
        return fallocate_keep_size is not None

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def preallocate(self, path: Path, size: int) -> None:
        """A file of `size` bytes whose blocks are allocated (the disk-full reserve)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)

    # -- names -----------------------------------------------------------------------------

    def mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def lock(self, path: Path) -> int | None:
        """An exclusive lock on `path` (created 0644), held until its fd is closed; None if
        another process holds it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if os.fstat(fd).st_mode & 0o111:
            os.fchmod(fd, 0o644)  # made executable by an older kestrelq; it holds no program
        return fd

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def file_size(self, path: Path) -> int:
        return path.stat().st_size

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def truncate(self, path: Path, size: int) -> None:
        os.truncate(path, size)

    # -- reading ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def mapped(self, path: Path) -> Iterator[memoryview]:
        """The whole file, read-only, as a view (mmap: a big journal is not read into memory).

        The view's `obj` is the mmap, so a reader can drop the pages it has finished with.
        """
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                yield memoryview(b"")
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    yield view
                finally:
                    view.release()
