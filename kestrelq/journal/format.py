"""The journal file format: pure encoding and decoding, no I/O.

Theory of operation
-------------------
A journal is one file per queue: a 4-byte magic header, then records appended in the order
the queue's state changed. Replaying the records from the start rebuilds the queue exactly, so
the in-memory state is only ever a cache of the journal.

Each record is framed so a reader can tell a clean end, a torn tail and damage apart:

    u32 length   (bytes of op + payload)
    u32 crc32    (of op + payload)
    u8  op
    payload

All integers are little-endian. The ops mirror Kestrel's (ADDX, REMOVE, REMOVE_TENTATIVE_XID,
CONFIRM_REMOVE, UNREMOVE) plus FLUSH, with a checksum per record as LevelDB's log does. An ADD
carries the flags and the delivery count, which Kestrel's journal had no room for.

Segments and checkpoints: a queue's journal is a series of segment files. Every segment
starts with a checkpoint, the queue's state in records: CHECKPOINT (forget everything), then
SNAP_ADD + OPEN for each open read, SNAP_ADD for each item held in memory, and BEHIND when
more items are only on disk: "`count` more items follow, the ADD records from (segment,
offset) on". Replay therefore reads only the newest segment; older segments are kept only while
BEHIND points into them. SNAP_ADD differs from ADD only so that the reader of a read-behind
region can skip snapshot copies of items it must not see twice.
"""

from __future__ import annotations

import struct
import zlib
from typing import ClassVar, Final

from kestrelq.errors import JournalCorrupt
from kestrelq.journal.item import Item
from kestrelq.journal.opcodes import Opcode as Opcode
from kestrelq.value import value

MAGIC = b"KQJ\x01"
HEADER = struct.Struct("<II")  # length, crc32
ADD_FIELDS = struct.Struct("<Iqqi")  # flags, added_ms, expires_ms, deliveries
XID = struct.Struct("<Q")
BEHIND_FIELDS = struct.Struct("<QQQQ")  # segment, offset, count, bytes
RECORD_OVERHEAD = HEADER.size + 1


class Add:
    """Written out rather than `@value`, as `Item` is (journal/item.py): one per set, built
    by a native constructor once compiled."""

    __match_args__: Final = ("item",)
    __slots__: ClassVar[tuple[str, ...]] = ("item",)

    def __init__(self, item: Item) -> None:
        self.item: Final = item

    def __eq__(self, other: object) -> bool:
        if type(other) is not Add:
            return NotImplemented
        assert isinstance(other, Add)
        return self.item == other.item

    def __hash__(self) -> int:
        return hash((Add, self.item))

    def __reduce__(self) -> tuple[type[Add], tuple[Item]]:
        # copy and pickle: compiled, a native class has no default way to rebuild itself.
        return (Add, (self.item,))

    def __repr__(self) -> str:
        return f"Add(item={self.item!r})"


@value
class SnapAdd:
    """An item of a checkpoint (same meaning as Add, skipped by the read-behind reader)."""

    item: Item


@value
class Checkpoint:
    """A snapshot of the queue starts here: forget all earlier state."""


@value
class Behind:
    """`count` items (`bytes` of data) not in memory: the ADD records from (segment, offset)."""

    segment: int
    offset: int
    count: int
    bytes: int


@value
class Remove:
    """The head item left the queue (get, expiry, discard, dead-letter)."""


class Open:
    """The head item became the open read `xid`.

    Written out rather than `@value` (one per reliable read): see `Add`.
    """

    __match_args__: Final = ("xid",)
    __slots__: ClassVar[tuple[str, ...]] = ("xid",)

    def __init__(self, xid: int) -> None:
        self.xid: Final = xid

    def __eq__(self, other: object) -> bool:
        if type(other) is not Open:
            return NotImplemented
        assert isinstance(other, Open)
        return self.xid == other.xid

    def __hash__(self) -> int:
        return hash((Open, self.xid))

    def __reduce__(self) -> tuple[type[Open], tuple[int]]:
        return (Open, (self.xid,))

    def __repr__(self) -> str:
        return f"Open(xid={self.xid})"


class Confirm:
    """Open read `xid` was confirmed and is gone.

    Written out rather than `@value` (one per reliable read): see `Add`.
    """

    __match_args__: Final = ("xid",)
    __slots__: ClassVar[tuple[str, ...]] = ("xid",)

    def __init__(self, xid: int) -> None:
        self.xid: Final = xid

    def __eq__(self, other: object) -> bool:
        if type(other) is not Confirm:
            return NotImplemented
        assert isinstance(other, Confirm)
        return self.xid == other.xid

    def __hash__(self) -> int:
        return hash((Confirm, self.xid))

    def __reduce__(self) -> tuple[type[Confirm], tuple[int]]:
        return (Confirm, (self.xid,))

    def __repr__(self) -> str:
        return f"Confirm(xid={self.xid})"


@value
class Unremove:
    """Open read `xid` went back to the head of the queue."""

    xid: int


@value
class Flush:
    """Every ready item was removed (open reads stay)."""


Record = Add | Remove | Open | Confirm | Unremove | Flush | SnapAdd | Checkpoint | Behind

REMOVE = Remove()
FLUSH = Flush()
CHECKPOINT = Checkpoint()


def _frame(op: Opcode, payload: bytes) -> bytes:
    body = bytes((op,)) + payload
    return HEADER.pack(len(body), zlib.crc32(body)) + body


_ADD_PREFIX = struct.Struct("<BIqqi")  # op + ADD_FIELDS, the part of an ADD before its data
_XID_BODY = struct.Struct("<BQ")  # op + XID, the whole body of OPEN, CONFIRM and UNREMOVE
_REMOVE_PARTS = (_frame(Opcode.REMOVE, b""),)
# Every command appends a record or two: the dispatch below is by exact type and the opcodes
# are plain ints, since an isinstance against a union and an IntEnum member lookup each cost
# more than the packing itself.
_ADD_OPS: dict[type[Record], int] = {Add: int(Opcode.ADD), SnapAdd: int(Opcode.SNAP_ADD)}
_XID_OPCODES: dict[type[Record], int] = {
    Open: int(Opcode.OPEN),
    Confirm: int(Opcode.CONFIRM),
    Unremove: int(Opcode.UNREMOVE),
}


def encode(record: Record) -> bytes:
    """The bytes of one framed record."""
    return b"".join(encode_parts(record))


def encode_parts(record: Record) -> tuple[bytes, ...]:
    """The bytes of one framed record in pieces, so that an item's data is never copied
    (written with writev). Its checksum is chained onto the prefix's."""
    kind = type(record)
    op = _ADD_OPS.get(kind)
    if op is not None:
        item: Item = record.item  # type: ignore[union-attr]  # an Add or SnapAdd (typing.cast is a call)
        prefix = _ADD_PREFIX.pack(op, item.flags, item.added_ms, item.expires_ms, item.deliveries)
        data = item.data
        crc = zlib.crc32(data, zlib.crc32(prefix))
        return HEADER.pack(len(prefix) + len(data), crc) + prefix, data
    if kind is Remove:  # every plain get: its bytes never change
        return _REMOVE_PARTS
    op = _XID_OPCODES.get(kind)
    if op is not None:  # every reliable read: an open, and a confirm when it is closed
        body = _XID_BODY.pack(op, record.xid)  # type: ignore[union-attr]  # Open, Confirm, Unremove
        return (HEADER.pack(_XID_BODY.size, zlib.crc32(body)) + body,)
    return (_encode_small(record),)


def _encode_small(record: Record) -> bytes:
    # Keyword patterns, not positional: Debian's mypyc (1.0, which compiles the images'
    # hot path) crashes on a positional pattern of a dataclass.
    match record:
        case Add() | SnapAdd():
            raise AssertionError("encoded by encode_parts")
        case Checkpoint():
            return _frame(Opcode.CHECKPOINT, b"")
        case Behind(segment=segment, offset=offset, count=count, bytes=size):
            return _frame(Opcode.BEHIND, BEHIND_FIELDS.pack(segment, offset, count, size))
        case Remove():
            return _frame(Opcode.REMOVE, b"")
        case Open(xid=xid):
            return _frame(Opcode.OPEN, XID.pack(xid))
        case Confirm(xid=xid):
            return _frame(Opcode.CONFIRM, XID.pack(xid))
        case Unremove(xid=xid):
            return _frame(Opcode.UNREMOVE, XID.pack(xid))
        case Flush():
            return _frame(Opcode.FLUSH, b"")


_BARE: dict[int, Record] = {
    Opcode.REMOVE: REMOVE,
    Opcode.FLUSH: FLUSH,
    Opcode.CHECKPOINT: CHECKPOINT,
}

_XID_OPS: dict[int, type[Open] | type[Confirm] | type[Unremove]] = {
    Opcode.OPEN: Open,
    Opcode.CONFIRM: Confirm,
    Opcode.UNREMOVE: Unremove,
}


def record_end(buf: bytes | memoryview, offset: int, max_length: int) -> int | None:
    """Check the framing and checksum of the record at `offset`; its end offset if whole.

    Returns None when the buffer ends inside the record (a torn tail if the file ends
    there). Raises JournalCorrupt when the bytes cannot be a record. This is the one place
    the framing is checked: `decode` and the readers that only verify both go through it.
    """
    if offset + HEADER.size > len(buf):
        return None
    length: int
    crc: int
    length, crc = HEADER.unpack_from(buf, offset)
    if length == 0 or length > max_length:
        raise JournalCorrupt("", offset, f"impossible record length {length}")
    start = offset + HEADER.size
    stop = start + length
    if stop > len(buf):
        return None
    if zlib.crc32(buf[start:stop]) != crc:
        raise JournalCorrupt("", offset, "checksum mismatch")
    return stop


def decode(buf: bytes | memoryview, offset: int, max_length: int) -> tuple[Record, int] | None:
    """Decode the record at `offset`.

    Returns (record, next offset), or None when the buffer ends inside the record (a torn tail
    if the file ends there). Raises JournalCorrupt (with no path: the caller knows the file)
    when the bytes cannot be a record.
    """
    stop = record_end(buf, offset, max_length)
    if stop is None:
        return None
    body = buf[offset + HEADER.size : stop]
    length = stop - offset - HEADER.size
    op = body[0]
    if op == Opcode.ADD or op == Opcode.SNAP_ADD:
        if length < 1 + ADD_FIELDS.size:
            raise JournalCorrupt("", offset, "short ADD record")
        flags, added_ms, expires_ms, deliveries = ADD_FIELDS.unpack_from(body, 1)
        item = Item(bytes(body[1 + ADD_FIELDS.size :]), flags, added_ms, expires_ms, deliveries)
        return (Add(item) if op == Opcode.ADD else SnapAdd(item)), stop
    if op in _BARE:
        if length != 1:
            raise JournalCorrupt("", offset, "payload on a record that has none")
        return _BARE[op], stop
    if op == Opcode.BEHIND:
        if length != 1 + BEHIND_FIELDS.size:
            raise JournalCorrupt("", offset, "bad BEHIND record length")
        return Behind(*BEHIND_FIELDS.unpack_from(body, 1)), stop
    cls = _XID_OPS.get(op)
    if cls is None:
        raise JournalCorrupt("", offset, f"unknown opcode {op}")
    if length != 1 + XID.size:
        raise JournalCorrupt("", offset, "bad xid record length")
    (xid,) = XID.unpack_from(body, 1)
    return cls(xid), stop
