"""The client side of the memcache text protocol, sans-IO: the other half of `parser`.

Theory of operation
-------------------
`send(command)` encodes a `Command` (the same data classes the server half parses into) and
remembers which reply it expects; the caller writes the bytes. Feed what the server sends with
`receive_data()`, then call `next_event()` until it returns None (more bytes needed). It returns
one `Reply` per command, in the order the commands were sent, or raises `RemoteProtocolError`
when the bytes cannot be the reply to the command they answer. After that error the connection
is out of step, and the client half refuses to go on (state CLOSED): hang up.

Rule 1: the command decides how a reply is framed and read. `END` alone is an empty get
(`Values(())`) after a get, `Status.END` after a flush, an empty `Stats` after `stats`; a bare
number is a `Count` only after a flush_expired. Any command may instead get an error line,
`ERROR`, `CLIENT_ERROR <reason>` or `SERVER_ERROR <reason>`: an `ErrorReply` event, not an
exception, since the connection goes on.

Rule 2: no reply is expected for a command sent with noreply (`set`, `delete`, `flush_all`),
whatever happens on the server, nor for `quit` and `shutdown` (the server closes the
connection). An error line that arrives while no reply is expected is returned as is, without
answering anything: the server sends one unprompted when it refuses a connection
(`SERVER_ERROR too many connections`) before it closes.

Rule 3: bytes sent by other means (exact-bytes tests) are answered through `expect_reply()`,
which expects one reply of any kind and frames it by its first line. `consumed` counts the
bytes of every reply returned so far, so such a caller can cut the exact bytes out of what it
received.

Limits: a line longer than `max_line_bytes` and a VALUE longer than `max_value_bytes` are
protocol errors: a server that misbehaves cannot make the client buffer without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum, IntEnum, auto
from typing import Any

from kestrelq.errors import RemoteProtocolError
from kestrelq.protocol import commands as c
from kestrelq.protocol.buffer import ReceiveBuffer
from kestrelq.value import value

# -- events ---------------------------------------------------------------------------------


class Status(Enum):
    """One-word replies that carry nothing else."""

    STORED = b"STORED"
    NOT_STORED = b"NOT_STORED"
    DELETED = b"DELETED"
    NOT_FOUND = b"NOT_FOUND"
    END = b"END"


@value
class Value:
    """One item of a get or monitor reply: the key as the server echoed it."""

    key: bytes
    flags: int
    data: bytes


@value
class Values:
    """A get or monitor reply: the items before END (none for a miss or an empty queue)."""

    items: tuple[Value, ...]


@value
class Stats:
    """`STAT name value` lines, in the order sent."""

    stats: dict[str, str]


@value
class DumpStats:
    """Kestrel's per-queue `dump_stats` blocks: queue name -> {key: value}."""

    queues: dict[str, dict[str, str]]


@value
class Version:
    text: str


@value
class Count:
    """The number a flush_expired or flush_all_expired answers."""

    n: int


@value
class Message:
    """A free-text line: `Flushed all queues.`, `Reloaded config.`."""

    text: str


@value
class ErrorReply:
    """`ERROR`, `CLIENT_ERROR <reason>` or `SERVER_ERROR <reason>`."""

    word: str
    reason: str


Reply = Status | Values | Stats | DumpStats | Version | Count | Message | ErrorReply

# -- what each command expects ----------------------------------------------------------------


class Expect(IntEnum):
    # An IntEnum: hashed as an int, in C (an Enum hashes in Python, on every reply).

    VALUES = auto()  # VALUE blocks through END
    STORED = auto()  # STORED or NOT_STORED
    DELETED = auto()  # DELETED or NOT_FOUND
    END = auto()  # END alone
    MESSAGE = auto()  # one line of text
    COUNT = auto()  # one decimal number
    STATS = auto()  # STAT lines through END
    DUMP_STATS = auto()  # queue '<name>' { ... } blocks through END
    VERSION = auto()  # VERSION <text>
    STATUS = auto()  # any one-word status (a reply framed by its first line)
    ANY = auto()  # framed by its first line (expect_reply)


class State(Enum):
    IDLE = auto()  # between replies
    VALUES = auto()  # inside a VALUE ... END reply
    LINES = auto()  # inside a STAT or dump_stats reply
    CLOSED = auto()  # after a protocol error: nothing more is parsed


# Command type -> what its reply is (None: no reply). A set or delete with noreply has none.
_EXPECT: dict[type, Expect | None] = {
    c.Get: Expect.VALUES,
    c.Monitor: Expect.VALUES,
    c.Set: Expect.STORED,
    c.Delete: Expect.DELETED,
    c.Flush: Expect.END,
    c.Confirm: Expect.END,
    c.FlushAll: Expect.MESSAGE,
    c.Reload: Expect.MESSAGE,
    c.FlushExpired: Expect.COUNT,
    c.FlushAllExpired: Expect.COUNT,
    c.Stats: Expect.STATS,
    c.DumpStats: Expect.DUMP_STATS,
    c.Version: Expect.VERSION,
    c.Quit: None,
    c.Shutdown: None,
    c.GetStatus: Expect.MESSAGE,
    c.SetStatus: Expect.END,
}

_ERROR_WORDS = {b"ERROR": "ERROR", b"CLIENT_ERROR": "CLIENT_ERROR", b"SERVER_ERROR": "SERVER_ERROR"}
_EMPTY = Values(())

# The whole reply when it is one status word: looked up first, since almost every reply of a
# busy producer or consumer is one of these.
_ONE_LINE: dict[tuple[Expect, bytes], Reply] = {
    (Expect.VALUES, b"END"): _EMPTY,
    (Expect.STORED, b"STORED"): Status.STORED,
    (Expect.STORED, b"NOT_STORED"): Status.NOT_STORED,
    (Expect.DELETED, b"DELETED"): Status.DELETED,
    (Expect.DELETED, b"NOT_FOUND"): Status.NOT_FOUND,
    (Expect.END, b"END"): Status.END,
    **{(Expect.STATUS, s.value): s for s in Status},
}

_IDLE, _VALUES, _LINES, _CLOSED = State.IDLE, State.VALUES, State.LINES, State.CLOSED
_E_STORED, _E_VALUES = Expect.STORED, Expect.VALUES


def _set(cmd: c.Set) -> bytes:
    data = cmd.data
    if len(data) > 65536:  # joined, not formatted: %s would copy a big block twice
        head = b"set %s %d %d %d" % (cmd.queue.encode(), cmd.flags, cmd.exptime, len(data))
        return b"".join((head, b" noreply\r\n" if cmd.noreply else b"\r\n", data, b"\r\n"))
    return b"set %s %d %d %d%s\r\n%s\r\n" % (
        cmd.queue.encode(), cmd.flags, cmd.exptime, len(data),
        b" noreply" if cmd.noreply else b"", data,
    )  # fmt: skip


def _delete(cmd: c.Delete) -> bytes:
    return b"delete %s%s\r\n" % (cmd.queue.encode(), b" noreply" if cmd.noreply else b"")


def _dump_stats_command(cmd: c.DumpStats) -> bytes:
    return b" ".join([b"dump_stats", *(q.encode() for q in cmd.queues)]) + b"\r\n"


def _monitor(cmd: c.Monitor) -> bytes:
    extra = b" %d" % cmd.max_items if cmd.max_items else b""
    return b"monitor %s %d%s\r\n" % (cmd.queue.encode(), cmd.seconds, extra)


def _constant(data: bytes) -> Callable[[Any], bytes]:
    return lambda _cmd: data


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    c.Get: lambda cmd: b"get %s\r\n" % cmd.key,
    c.Set: _set,
    c.Delete: _delete,
    c.Flush: lambda cmd: b"flush %s\r\n" % cmd.queue.encode(),
    c.FlushExpired: lambda cmd: b"flush_expired %s\r\n" % cmd.queue.encode(),
    c.DumpStats: _dump_stats_command,
    c.Monitor: _monitor,
    c.Confirm: lambda cmd: b"confirm %s %d\r\n" % (cmd.queue.encode(), cmd.count),
    c.FlushAll: lambda cmd: b"flush_all noreply\r\n" if cmd.noreply else b"flush_all\r\n",
    c.FlushAllExpired: _constant(b"flush_all_expired\r\n"),
    c.Stats: _constant(b"stats\r\n"),
    c.Version: _constant(b"version\r\n"),
    c.Reload: _constant(b"reload\r\n"),
    c.Shutdown: _constant(b"shutdown\r\n"),
    c.Quit: _constant(b"quit\r\n"),
    c.GetStatus: _constant(b"status\r\n"),
    c.SetStatus: lambda cmd: b"status %s\r\n" % cmd.status.value.encode(),
}


def encode(command: c.Command) -> bytes:
    """The bytes of one command on the wire (what `ServerConnection` parses back into it)."""
    return _ENCODERS[type(command)](command)


def _number(token: bytes, what: str) -> int:
    # bytes.isdigit is ASCII-only, and refuses the signs, spaces and `_` that int() allows.
    if not token.isdigit() or len(token) > 20:
        raise RemoteProtocolError(f"bad {what} in reply: {token[:32]!r}")
    return int(token)


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"reply is not UTF-8: {raw[:64]!r}") from None


class ClientConnection:
    """Encodes one connection's commands and parses the replies to them."""

    def __init__(self, max_line_bytes: int = 1 << 16, max_value_bytes: int = 1 << 30) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_value_bytes = max_value_bytes
        self.state = State.IDLE
        self._buffer = ReceiveBuffer()
        self._expected: deque[Expect] = deque()
        self._received = 0
        # The reply being read, in state VALUES or LINES.
        self._items: list[Value] = []
        self._value_header: tuple[bytes, int, int] | None = None
        self._lines: list[bytes] = []
        self._lines_kind = Expect.STATS

    @property
    def pending(self) -> int:
        """Replies still expected."""
        return len(self._expected)

    @property
    def consumed(self) -> int:
        """Bytes received and parsed so far; between replies, through the end of the last one."""
        return self._received - len(self._buffer)

    def send(self, command: c.Command) -> bytes:
        """The bytes to write for `command`; its reply is expected after those sent before."""
        # Sets and gets first, without the table lookups: a producer's and a consumer's loop.
        if isinstance(command, c.Set):
            if not command.noreply:
                self._expected.append(_E_STORED)
            return _set(command)
        if isinstance(command, c.Get):
            self._expected.append(_E_VALUES)
            return b"get %s\r\n" % command.key
        expect = _EXPECT[type(command)]
        # Any command with a `noreply` field may be sent with it (delete, flush_all): no reply.
        if expect is not None and not getattr(command, "noreply", False):
            self._expected.append(expect)
        return _ENCODERS[type(command)](command)

    def expect_reply(self) -> None:
        """Expect one reply of any kind, to bytes sent by other means (Rule 3)."""
        self._expected.append(Expect.ANY)

    def receive_data(self, data: bytes) -> None:
        if self.state is not _CLOSED:
            self._buffer += data
            self._received += len(data)

    def next_event(self) -> Reply | None:
        """The next complete reply, None if more bytes are needed; raises on a bad reply."""
        try:
            if self.state is _IDLE and self._expected:
                # Between replies, the usual case, inline: the bench's load generator runs
                # this once per message.
                line = self._buffer.maybe_extract_line()
                if line is None or len(line) > self.max_line_bytes:
                    self._check_partial_line(line)
                    return None
                expect = self._expected[0]
                reply = _ONE_LINE.get((expect, line))
                if reply is None:
                    if expect is _E_VALUES and line[:6] == b"VALUE ":
                        reply = self._value_fast(line)
                    else:
                        reply = self._first_line(expect, line)
            else:
                reply = self._next()
        except RemoteProtocolError:
            self.state = _CLOSED
            raise
        if reply is not None:
            self._expected.popleft()
        return reply

    # -- parsing ---------------------------------------------------------------------------

    def _next(self) -> Reply | None:
        """Inside a reply, after an error, or with no reply expected."""
        state = self.state
        if state is _VALUES:
            return self._values()
        if state is _LINES:
            return self._more_lines()
        if state is _CLOSED:
            raise RemoteProtocolError("connection is out of step after a bad reply")
        line = self._buffer.maybe_extract_line()
        if line is None or len(line) > self.max_line_bytes:
            self._check_partial_line(line)
            return None
        return self._unprompted(line)

    def _check_partial_line(self, line: bytes | None) -> None:
        if line is not None or len(self._buffer) > self.max_line_bytes:
            raise RemoteProtocolError("reply line too long")

    def _value_fast(self, line: bytes) -> Reply | None:
        # A get that hit one item, whole in the buffer: the reply of almost every busy
        # consumer. The block is taken together with the END after it, in one step; anything
        # else (a partial reply, a second item, a bad one) takes the general path instead.
        parts = line.split(b" ")
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            size = int(parts[3])
            if size <= self.max_value_bytes and len(parts[2]) <= 20:
                try:
                    block = self._buffer.maybe_extract_block(size, b"\r\nEND\r\n")
                except ValueError:
                    block = None  # not END after it: left in the buffer for the general path
                if block is not None:
                    return Values((Value(parts[1], int(parts[2]), block),))
        self._items = []
        self._start_value(line)
        self.state = _VALUES
        return self._values()

    def _line(self) -> bytes | None:
        line = self._buffer.maybe_extract_line()
        if line is None:
            if len(self._buffer) > self.max_line_bytes:
                raise RemoteProtocolError("reply line too long")
            return None
        if len(line) > self.max_line_bytes:
            raise RemoteProtocolError("reply line too long")
        return line

    def _unprompted(self, line: bytes) -> Reply:
        word, _, reason = line.partition(b" ")
        if word in _ERROR_WORDS:
            # Rule 2: returned, but it answers nothing; pop an Expect.ANY pushed just for it.
            self._expected.append(Expect.ANY)
            return ErrorReply(_ERROR_WORDS[word], _text(reason))
        raise RemoteProtocolError(f"reply with no command waiting: {line[:64]!r}")

    def _first_line(self, expect: Expect, line: bytes) -> Reply | None:
        if expect is Expect.ANY:
            expect = _frame(line)
            reply = _ONE_LINE.get((expect, line))
            if reply is not None:
                return reply
        word, _, rest = line.partition(b" ")
        if word in _ERROR_WORDS:
            return ErrorReply(_ERROR_WORDS[word], _text(rest))
        if expect is Expect.VALUES:
            self._items = []
            self._start_value(line)
            self.state = _VALUES
            return self._values()
        if expect is Expect.STATS or expect is Expect.DUMP_STATS:
            self._lines = []
            self._lines_kind = expect
            self.state = _LINES
            return self._lines_until_end(line) or self._more_lines()
        if expect is Expect.VERSION and word == b"VERSION" and rest:
            return Version(_text(rest))
        if expect is Expect.COUNT:
            return Count(_number(line, "count"))
        if expect is Expect.MESSAGE:
            return Message(_text(line))
        raise RemoteProtocolError(f"unexpected reply: {line[:64]!r}")

    def _start_value(self, line: bytes) -> None:
        parts = line.split(b" ")
        if len(parts) != 4 or parts[0] != b"VALUE":
            raise RemoteProtocolError(f"expected VALUE or END: {line[:64]!r}")
        size = _number(parts[3], "value length")
        if size > self.max_value_bytes:
            raise RemoteProtocolError(f"value of {size} bytes is over the client's limit")
        self._value_header = (parts[1], _number(parts[2], "flags"), size)

    def _values(self) -> Reply | None:
        while True:
            header = self._value_header
            if header is not None:
                try:
                    block = self._buffer.maybe_extract_block(header[2], b"\r\n")
                except ValueError:
                    raise RemoteProtocolError("value not followed by CRLF") from None
                if block is None:
                    return None
                self._items.append(Value(header[0], header[1], block))
                self._value_header = None
            line = self._line()
            if line is None:
                return None
            if line == b"END":
                self.state = _IDLE
                items, self._items = self._items, []
                return Values(tuple(items))
            self._start_value(line)

    def _more_lines(self) -> Reply | None:
        while True:
            line = self._line()
            if line is None:
                return None
            reply = self._lines_until_end(line)
            if reply is not None:
                return reply

    def _lines_until_end(self, line: bytes) -> Reply | None:
        if line != b"END":
            self._lines.append(line)
            return None
        self.state = _IDLE
        lines, self._lines = self._lines, []
        if self._lines_kind is Expect.STATS:
            return Stats(_stats(lines))
        return DumpStats(_dump_stats(lines))


def _frame(line: bytes) -> Expect:
    """How to read a reply to an unknown command, from its first line (Rule 3)."""
    if line.startswith(b"VALUE "):
        return Expect.VALUES
    if line.startswith(b"STAT "):
        return Expect.STATS
    if line.startswith(b"queue '") or not line:
        return Expect.DUMP_STATS
    if line.startswith(b"VERSION "):
        return Expect.VERSION
    if line.isdigit():
        return Expect.COUNT
    return Expect.STATUS if any(line == s.value for s in Status) else Expect.MESSAGE


def _stats(lines: list[bytes]) -> dict[str, str]:
    stats: dict[str, str] = {}
    for line in lines:
        parts = line.split(b" ", 2)
        if len(parts) != 3 or parts[0] != b"STAT":
            raise RemoteProtocolError(f"bad STAT line: {line[:64]!r}")
        stats[_text(parts[1])] = _text(parts[2])
    return stats


def _dump_stats(lines: list[bytes]) -> dict[str, dict[str, str]]:
    queues: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in lines:
        if current is None:
            if not line:
                continue  # a blank line stands for a queue that does not exist
            if not (line.startswith(b"queue '") and line.endswith(b"' {")):
                raise RemoteProtocolError(f"bad dump_stats line: {line[:64]!r}")
            current = queues.setdefault(_text(line[7:-3]), {})
        elif line == b"}":
            current = None
        else:
            key, eq, val = line.strip().partition(b"=")
            if not eq:
                raise RemoteProtocolError(f"bad dump_stats line: {line[:64]!r}")
            current[_text(key)] = _text(val)
    if current is not None:
        raise RemoteProtocolError("dump_stats block not closed")
    return queues
