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

A compacted journal is itself made of ordinary records (ADD, then OPEN for each open read,
then ADD for each ready item), so replay has no special case.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from kestrelq.queue.item import Item

MAGIC = b"KQJ\x01"
HEADER = struct.Struct("<II")  # length, crc32
ADD_FIELDS = struct.Struct("<Iqqi")  # flags, added_ms, expires_ms, deliveries
XID = struct.Struct("<Q")
RECORD_OVERHEAD = HEADER.size + 1


class Opcode(IntEnum):
    ADD = 1
    REMOVE = 2
    OPEN = 3
    CONFIRM = 4
    UNREMOVE = 5
    FLUSH = 6


@dataclass(frozen=True, slots=True)
class Add:
    item: Item


@dataclass(frozen=True, slots=True)
class Remove:
    """The head item left the queue (get, expiry, discard, dead-letter)."""


@dataclass(frozen=True, slots=True)
class Open:
    """The head item became the open read `xid`."""

    xid: int


@dataclass(frozen=True, slots=True)
class Confirm:
    """Open read `xid` was confirmed and is gone."""

    xid: int


@dataclass(frozen=True, slots=True)
class Unremove:
    """Open read `xid` went back to the head of the queue."""

    xid: int


@dataclass(frozen=True, slots=True)
class Flush:
    """Every ready item was removed (open reads stay)."""


Record = Add | Remove | Open | Confirm | Unremove | Flush

REMOVE = Remove()
FLUSH = Flush()


def _frame(op: Opcode, payload: bytes) -> bytes:
    body = bytes((op,)) + payload
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def encode(record: Record) -> bytes:
    """The bytes of one framed record."""
    match record:
        case Add(item):
            fields = ADD_FIELDS.pack(item.flags, item.added_ms, item.expires_ms, item.deliveries)
            return _frame(Opcode.ADD, fields + item.data)
        case Remove():
            return _frame(Opcode.REMOVE, b"")
        case Open(xid):
            return _frame(Opcode.OPEN, XID.pack(xid))
        case Confirm(xid):
            return _frame(Opcode.CONFIRM, XID.pack(xid))
        case Unremove(xid):
            return _frame(Opcode.UNREMOVE, XID.pack(xid))
        case Flush():
            return _frame(Opcode.FLUSH, b"")


class BadRecord(Exception):
    """The bytes at an offset are not a valid record (checksum, opcode or length)."""


_XID_OPS: dict[int, type[Open] | type[Confirm] | type[Unremove]] = {
    Opcode.OPEN: Open,
    Opcode.CONFIRM: Confirm,
    Opcode.UNREMOVE: Unremove,
}


def decode(buf: bytes | memoryview, offset: int, max_length: int) -> tuple[Record, int] | None:
    """Decode the record at `offset`.

    Returns (record, next offset), or None when the buffer ends inside the record (a torn tail
    if the file ends there). Raises BadRecord when the bytes cannot be a record.
    """
    end = len(buf)
    if offset + HEADER.size > end:
        return None
    length, crc = HEADER.unpack_from(buf, offset)
    if length == 0 or length > max_length:
        raise BadRecord(f"impossible record length {length}")
    start = offset + HEADER.size
    stop = start + length
    if stop > end:
        return None
    body = buf[start:stop]
    if zlib.crc32(body) != crc:
        raise BadRecord("checksum mismatch")
    op = body[0]
    if op == Opcode.ADD:
        if length < 1 + ADD_FIELDS.size:
            raise BadRecord("short ADD record")
        flags, added_ms, expires_ms, deliveries = ADD_FIELDS.unpack_from(body, 1)
        data = bytes(body[1 + ADD_FIELDS.size :])
        return Add(Item(data, flags, added_ms, expires_ms, deliveries)), stop
    if op == Opcode.REMOVE or op == Opcode.FLUSH:
        if length != 1:
            raise BadRecord("payload on a record that has none")
        return (REMOVE if op == Opcode.REMOVE else FLUSH), stop
    cls = _XID_OPS.get(op)
    if cls is None:
        raise BadRecord(f"unknown opcode {op}")
    if length != 1 + XID.size:
        raise BadRecord("bad xid record length")
    (xid,) = XID.unpack_from(body, 1)
    return cls(xid), stop
