"""File layers a journal test puts behind the journal's `Files` seam."""

from __future__ import annotations

import contextlib
import errno
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

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


# -- a file system that loses power ----------------------------------------------------------


SECTOR_BYTES = 512


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PowerCut(BaseException):
    """Raised by PowerCutFiles at the chosen operation: the machine is off.

    A BaseException, so that no `except OSError` or `except Exception` in the code under test
    can carry on as if it were an I/O error.
    """


class _Inode:
    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)  # what a reader sees now
        self.synced = bytes(data)  # what the last fsync or fdatasync made durable


class _Offset:
    """A file description's position, which `dup` shares as dup(2) does."""

    def __init__(self) -> None:
        self.at = 0


class PowerCutFiles(Files):
    """One data directory in memory that remembers what each fsync made durable.

    File contents: `fsync`/`fdatasync` of a file makes its current bytes durable. Names:
    creates, renames and unlinks are logged in order, and an fsync of the directory makes them
    durable. At a power cut (`cut_after` operations, then PowerCut), `after_power_cut` builds
    the file system a restart finds: every durable name, then a random prefix of the later
    name operations (journaling file systems keep metadata in order); every file its durable
    bytes, changed from where its bytes first differ by nothing more (ending on a record
    boundary, where no reader can see a loss), or by a random part of what was written since,
    as written or as zeros (a file extended whose data never reached the disk). Where the
    writes overwrote durable bytes (the zeros a journal writes ahead of its records), they
    reach the disk whole sectors at a time: the part kept ends at a sector boundary.
    Descriptors have positions (`seek`; `writev` and `write` go on from there), as files
    opened without O_APPEND do, and a `dup` shares its original's, as dup(2) does.
    """

    DIR_FD = 3

    def __init__(self, names: dict[str, _Inode] | None = None, cut_after: int = -1) -> None:
        self.names: dict[str, _Inode] = dict(names or {})
        self._durable_names = dict(self.names)
        # (old name, new name, inode): a create has no old name, an unlink no new one.
        self._name_log: list[tuple[str, str, _Inode | None]] = []
        self._fds: dict[int, _Inode | None] = {}  # None: the directory
        self._pos: dict[int, _Offset] = {}  # each descriptor's position
        self._next_fd = 10
        self.ops = 0
        self.trace: list[str] = []  # every operation so far, by name
        self.cut_after = cut_after
        self.cut_at = ""  # the operation power was cut at

    # -- the cut -----------------------------------------------------------------------------

    def _op(self, what: str) -> None:
        self.ops += 1
        self.trace.append(what)
        if self.ops == self.cut_after:
            self.cut_at = what
            raise PowerCut(what)

    def after_power_cut(self, rng: random.Random) -> PowerCutFiles:
        names = dict(self._durable_names)
        for old, new, inode in self._name_log[: rng.randint(0, len(self._name_log))]:
            if old:
                names.pop(old, None)
            if new:
                assert inode is not None
                names[new] = inode
        survivors: dict[str, _Inode] = {}
        copies: dict[int, _Inode] = {}
        for name, inode in names.items():
            if id(inode) not in copies:
                data = inode.synced
                current = bytes(inode.data)
                luck = rng.random()
                same = _common_prefix(data, current)
                if same < len(current) and luck < 0.7:
                    kept = rng.randint(same, len(current))
                    if kept < len(data):  # inside durable bytes: whole sectors only
                        kept = max(same, kept - kept % SECTOR_BYTES)
                    extra = current[same:kept]
                    if luck < 0.2:
                        extra = bytes(len(extra))
                    data = data[:same] + extra + data[kept:]
                copies[id(inode)] = _Inode(data)
            survivors[name] = copies[id(inode)]
        return PowerCutFiles(survivors)

    # -- descriptors -------------------------------------------------------------------------

    def _new_fd(self, inode: _Inode | None) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = inode
        self._pos[fd] = _Offset()
        return fd

    def _inode(self, fd: int) -> _Inode:
        inode = self._fds[fd]
        assert inode is not None, "a data operation on the directory"
        return inode

    def _create(self, path: Path) -> _Inode:
        inode = _Inode()
        self.names[path.name] = inode
        self._name_log.append(("", path.name, inode))
        return inode

    def _lookup(self, path: Path) -> _Inode:
        try:
            return self.names[path.name]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path)) from None

    def open_append(self, path: Path, create: bool = True) -> int:
        self._op("open_append")
        inode = self.names.get(path.name)
        if inode is None:
            if not create:
                self._lookup(path)
            inode = self._create(path)
        return self._new_fd(inode)

    def open_new(self, path: Path) -> int:
        self._op("open_new")
        inode = self.names.get(path.name)
        if inode is None:
            inode = self._create(path)
        else:
            inode.data.clear()
        return self._new_fd(inode)

    def open_dir(self, path: Path) -> int:
        return self._new_fd(None)

    def close(self, fd: int) -> None:
        del self._fds[fd]
        del self._pos[fd]

    def dup(self, fd: int) -> int:
        dup = self._new_fd(self._fds[fd])
        self._pos[dup] = self._pos[fd]  # the same description: a seek or write moves both
        return dup

    def size(self, fd: int) -> int:
        return len(self._inode(fd).data)

    # -- writing -------------------------------------------------------------------------------

    def _write_at(self, fd: int, offset: int, data: bytes) -> None:
        inode = self._inode(fd)
        if offset > len(inode.data):
            inode.data += bytes(offset - len(inode.data))
        inode.data[offset : offset + len(data)] = data

    def writev(self, fd: int, parts: Sequence[Buffer]) -> int:
        self._op("writev")
        data = b"".join(bytes(p) for p in parts)
        self._write_at(fd, self._pos[fd].at, data)
        self._pos[fd].at += len(data)
        return len(data)

    def write(self, fd: int, data: Buffer) -> int:
        self._op("write")
        self._write_at(fd, self._pos[fd].at, bytes(data))
        self._pos[fd].at += len(data)
        return len(data)

    def seek(self, fd: int, offset: int) -> None:
        self._pos[fd].at = offset

    def zero_fill(self, fd: int, offset: int, length: int) -> None:
        self._op("zero_fill")
        self._write_at(fd, offset, bytes(length))

    def ftruncate(self, fd: int, size: int) -> None:
        self._op("ftruncate")
        inode = self._inode(fd)
        del inode.data[size:]
        inode.data += bytes(size - len(inode.data))

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        self._op("fallocate")

    @property
    def can_fallocate(self) -> bool:
        return True

    def fsync(self, fd: int) -> None:
        self._op("fsync")
        inode = self._fds[fd]
        if inode is None:
            self._durable_names = dict(self.names)
            self._name_log.clear()
        else:
            inode.synced = bytes(inode.data)

    def fdatasync(self, fd: int) -> None:
        self.fsync(fd)

    def sync(self) -> None:
        """sync(1): every file's bytes and every name durable."""
        for inode in self.names.values():
            inode.synced = bytes(inode.data)
        self._durable_names = dict(self.names)
        self._name_log.clear()

    def preallocate(self, path: Path, size: int) -> None:
        self._op("preallocate")
        inode = self.names.get(path.name) or self._create(path)
        inode.data[len(inode.data) :] = bytes(max(0, size - len(inode.data)))

    # -- names -------------------------------------------------------------------------------

    def mkdir(self, path: Path) -> None:
        pass

    def lock(self, path: Path) -> int | None:
        return self._new_fd(self.names.get(path.name) or self._create(path))

    def listdir(self, path: Path) -> list[str]:
        return sorted(self.names)

    def exists(self, path: Path) -> bool:
        return path.name in self.names

    def file_size(self, path: Path) -> int:
        return len(self._lookup(path).data)

    def rename(self, src: Path, dst: Path) -> None:
        self._op("rename")
        inode = self.names.pop(src.name)
        self.names[dst.name] = inode
        self._name_log.append((src.name, dst.name, inode))  # atomic, as rename(2) is

    def unlink(self, path: Path) -> None:
        self._op("unlink")
        if self.names.pop(path.name, None) is not None:
            self._name_log.append((path.name, "", None))

    def truncate(self, path: Path, size: int) -> None:
        self._op("truncate")
        inode = self._lookup(path)
        del inode.data[size:]

    # -- reading -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def mapped(self, path: Path) -> Iterator[memoryview]:
        yield memoryview(bytes(self._lookup(path).data))
