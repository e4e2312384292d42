"""The server side of the memcache text protocol, sans-IO.

Theory of operation
-------------------
Feed received bytes with `receive_data()`, then call `next_command()` until it returns None
(more bytes needed). It returns one `Command` at a time, or raises `RemoteProtocolError` whose
`close` flag says whether the connection can go on. The parser never does I/O and never reads
the clock; the caller executes commands in order and writes their replies in order.

States: IDLE (expecting a command line) -> BLOCK (expecting the data block of a `set`)
-> IDLE; or SKIP (dropping the data block of a `set` we refuse, so the connection stays in
step) -> IDLE; any error with close=True -> CLOSED, where nothing more is parsed.

Limits: a command line longer than `max_line_bytes` is refused without buffering it; a `set`
that announces more than `max_item_bytes` is refused at once and closes the connection, before
any of its data is read (memcached's reply, `SERVER_ERROR object too large for cache`).

noreply: `set`, `delete` and `flush_all` accept a trailing `noreply`. Such a command gets no
reply whatever happens, errors included: the error raised carries `noreply=True` and the
caller logs it instead of answering (a reply the client does not read would be taken as the
answer to its next command). The same holds for any line ending in `noreply` that we refuse
(`add ... noreply` from a memcache client): it is refused silently and the connection closed.

One key per get: `get a b` is refused (CLIENT_ERROR, the connection stays usable) and takes no
item. Answering several keys would take an item off each queue in one command, and a failure
part way (an open read already held on `b`) would lose the items already taken.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto

from kestrelq.errors import InvalidQueueName, ItemTooLarge, ProtocolError, RemoteProtocolError
from kestrelq.protocol import commands as c
from kestrelq.protocol.buffer import ReceiveBuffer
from kestrelq.queue import names
from kestrelq.queue.collection import GetOptions

MAX_U32 = 2**32 - 1


class State(Enum):
    IDLE = auto()
    BLOCK = auto()
    SKIP = auto()
    CLOSED = auto()


# The states as module globals: next_command runs once per command, a class lookup each time
# adds up.
_IDLE, _BLOCK, _SKIP, _CLOSED = State.IDLE, State.BLOCK, State.SKIP, State.CLOSED


def _int(token: bytes, what: str, lo: int, hi: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise RemoteProtocolError(f"bad {what}") from None
    if not lo <= value <= hi:
        raise RemoteProtocolError(f"{what} out of range")
    return value


def _queue(token: bytes, *, close: bool) -> str:
    name = _name_cache.get(token)
    if name is not None:
        return name
    try:
        name = names.decode(token)
    except InvalidQueueName as exc:
        raise RemoteProtocolError(str(exc), close=close) from None
    if len(_name_cache) >= _CACHE_MAX:
        _name_cache.clear()
    _name_cache[token] = name
    return name


# Workers send the same few keys over and over (`jobs/close/open/t=1000`): parsed keys and
# queue names are cached. Both results are immutable, and the caches are bounded.
_CACHE_MAX = 4096
_get_cache: dict[bytes, c.Get] = {}
_name_cache: dict[bytes, str] = {}


def parse_get_key(key: bytes) -> c.Get:
    """`queue/opt/opt...` (cached); see `_parse_get_key`."""
    cached = _get_cache.get(key)
    if cached is None:
        cached = _parse_get_key(key)
        if len(_get_cache) >= _CACHE_MAX:
            _get_cache.clear()
        _get_cache[key] = cached
    return cached


def _parse_get_key(key: bytes) -> c.Get:
    """`queue/opt/opt...`: options in any order; unknown ones are ignored, as Kestrel does."""
    name, _, rest = key.partition(b"/")
    if not name:
        raise RemoteProtocolError("empty queue name")
    queue = _queue(name, close=True)
    timeout_ms = 0
    flags = {"open": False, "close": False, "abort": False, "peek": False}
    for opt in rest.split(b"/") if rest else ():
        if opt.startswith(b"t="):
            timeout_ms = _int(opt[2:], "timeout", -(2**31), 2**31 - 1)
        else:
            text = opt.decode("ascii", "replace")
            if text in flags:
                flags[text] = True
    options = GetOptions(timeout_ms=max(0, timeout_ms), **flags)
    if (options.peek or options.abort) and (options.open or options.close):
        raise RemoteProtocolError("peek and abort cannot be combined with open or close")
    if options.peek and options.abort:
        raise RemoteProtocolError("peek cannot be combined with abort")
    return c.Get(key, queue, options)


def _one_queue(args: list[bytes], what: str) -> str:
    if not args:
        raise RemoteProtocolError(f"{what} needs a queue name", close=False)
    return _queue(args[0], close=False)


class ServerConnection:
    """Parses one connection's byte stream into commands."""

    def __init__(self, max_line_bytes: int = 2048, max_item_bytes: int = 64 << 20) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_item_bytes = max_item_bytes
        self.state = State.IDLE
        self._buffer = ReceiveBuffer()
        self._pending_set: tuple[str, int, int, int, bool] | None = None
        self._skip_left = 0
        self._skip_error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def block_size(self) -> int:
        """The declared size of the data block being received (0 when none is)."""
        pending = self._pending_set
        return pending[3] if pending is not None and self.state is _BLOCK else 0

    @property
    def in_command(self) -> bool:
        """Part of a command has arrived: a partial line, or a data block not yet complete."""
        return self.state in (_BLOCK, _SKIP) or (self.state is _IDLE and bool(self._buffer.data))

    def receive_data(self, data: bytes) -> None:
        if self.state is not _CLOSED:
            self._buffer.data += data

    def next_command(self) -> c.Command | None:
        """The next complete command, None if more bytes are needed; raises on bad input."""
        try:
            state = self.state
            if state is not _IDLE:
                return self._not_idle(state)
            buffer = self._buffer
            if not buffer.data:
                return None  # the end of every batch: nothing to search
            line = buffer.maybe_extract_line()
            if line is None:
                if len(buffer) > self.max_line_bytes:
                    raise RemoteProtocolError("line too long")
                return None
            if len(line) > self.max_line_bytes:
                raise RemoteProtocolError("line too long")
            return self._command(line)
        except ProtocolError as exc:
            if exc.close:
                self.state = State.CLOSED
            raise

    def _not_idle(self, state: State) -> c.Command | None:
        if state is _BLOCK:
            return self._finish_set()
        if state is _CLOSED:
            return None
        self._skip_left -= self._buffer.skip(self._skip_left)
        if self._skip_left:
            return None
        self.state = _IDLE
        assert self._skip_error is not None
        error, self._skip_error = self._skip_error, None
        raise error

    def _command(self, line: bytes) -> c.Command | None:
        tokens = line.split()
        if not tokens:
            raise RemoteProtocolError("empty command line")
        word = tokens[0]
        if word not in _LOWER:
            word = word.lower()  # commands are case-insensitive; clients send them in lower case
        args = tokens[1:]
        if word == b"set":
            return self._start_set(args)
        if word in (b"get", b"gets"):
            if not args:
                raise RemoteProtocolError("get needs a key", close=False)
            if len(args) > 1:
                raise RemoteProtocolError("get takes one key (one queue per get)", close=False)
            return parse_get_key(args[0])
        try:
            simple = _SIMPLE.get(word)
            if simple is not None:
                return simple()
            handler = _WITH_ARGS.get(word)
            if handler is not None:
                return handler(args)
            shown = word[:32].decode("ascii", "replace")
            raise RemoteProtocolError(f"unknown command {shown!r}")
        except ProtocolError as exc:
            exc.noreply = bool(args) and args[-1] == b"noreply"
            raise

    def _start_set(self, args: list[bytes]) -> c.Command | None:
        noreply = len(args) == 5 and args[4] == b"noreply"
        if len(args) != 4 and not noreply:
            raise RemoteProtocolError(
                "bad command line format", noreply=bool(args) and args[-1] == b"noreply"
            )
        try:
            flags, exptime, size = int(args[1]), int(args[2]), int(args[3])
        except ValueError:
            flags = exptime = size = -1
        if not (0 <= flags <= MAX_U32 and -(2**62) <= exptime <= 2**62 and 0 <= size <= 2**62):
            # Out of range or not a number: the checked parse names the field.
            try:
                flags = _int(args[1], "flags", 0, MAX_U32)
                exptime = _int(args[2], "exptime", -(2**62), 2**62)
                size = _int(args[3], "data length", 0, 2**62)
            except ProtocolError as exc:
                exc.noreply = noreply
                raise
        if size > self.max_item_bytes:
            raise ItemTooLarge(size, self.max_item_bytes, noreply=noreply)
        queue = _name_cache.get(args[0])  # the usual case, without a call
        if queue is None:
            try:
                queue = _queue(args[0], close=False)
            except RemoteProtocolError as exc:
                exc.noreply = noreply
                return self._skip(size, exc)
        try:
            block = self._buffer.maybe_extract_block(size, b"\r\n")
        except ValueError:
            raise RemoteProtocolError("bad data chunk", noreply=noreply) from None
        if block is not None:  # the usual case: the data came with its command line
            return c.Set(queue, flags, exptime, block, noreply)
        self._pending_set = (queue, flags, exptime, size, noreply)
        self.state = _BLOCK
        return None

    def _skip(self, size: int, error: ProtocolError) -> c.Command | None:
        # Drop the data block (and its CRLF) as it arrives, then report the error: the
        # connection stays in step and the client gets exactly one reply for its command (none
        # with noreply). Only sizes within max_item_bytes get here.
        self.state = _SKIP
        self._skip_left = size + 2
        self._skip_error = error
        return self._not_idle(_SKIP)

    def _finish_set(self) -> c.Command | None:
        assert self._pending_set is not None
        queue, flags, exptime, size, noreply = self._pending_set
        try:
            block = self._buffer.maybe_extract_block(size, b"\r\n")
        except ValueError:
            raise RemoteProtocolError("bad data chunk", noreply=noreply) from None
        if block is None:
            return None
        self._pending_set = None
        self.state = _IDLE
        return c.Set(queue, flags, exptime, block, noreply)


def _delete(args: list[bytes]) -> c.Command:
    noreply = len(args) > 1 and args[-1] == b"noreply"
    return c.Delete(_one_queue(args, "delete"), noreply)


def _flush_all(args: list[bytes]) -> c.Command:
    # memcache clients send `flush_all [delay] [noreply]` (pymemcache: `flush_all 0 noreply`).
    # Queues are flushed at once: a delay other than 0 is refused rather than ignored.
    noreply = bool(args) and args[-1] == b"noreply"
    rest = args[:-1] if noreply else args
    if len(rest) > 1 or (rest and _int(rest[0], "delay", 0, MAX_U32) != 0):
        raise RemoteProtocolError("flush_all takes no delay", close=False)
    return c.FlushAll(noreply)


def _dump_stats(args: list[bytes]) -> c.Command:
    return c.DumpStats(tuple(_queue(a, close=False) for a in args))


def _monitor(args: list[bytes]) -> c.Command:
    if len(args) not in (2, 3):
        raise RemoteProtocolError("monitor <queue> <seconds> [max-items]", close=False)
    queue = _queue(args[0], close=False)
    seconds = _int(args[1], "seconds", 0, 86400)
    max_items = _int(args[2], "max-items", 0, MAX_U32) if len(args) == 3 else 0
    return c.Monitor(queue, seconds, max_items)


def _confirm(args: list[bytes]) -> c.Command:
    if len(args) != 2:
        raise RemoteProtocolError("confirm <queue> <count>", close=False)
    return c.Confirm(_queue(args[0], close=False), _int(args[1], "count", 0, MAX_U32))


def _status(args: list[bytes]) -> c.Command:
    if not args:
        return c.GetStatus()
    if len(args) == 1:
        word = args[0].decode("ascii", "replace")
        try:
            return c.SetStatus(c.ServerStatus(word.upper()))
        except ValueError:
            pass
    shown = b" ".join(args)[:32].decode("ascii", "replace")
    raise RemoteProtocolError(
        f"unknown status {shown!r}: status [UP|READONLY|QUIESCENT]", close=False
    )


_SIMPLE: dict[bytes, Callable[[], c.Command]] = {
    b"flush_all_expired": c.FlushAllExpired,
    b"stats": c.Stats,
    b"version": c.Version,
    b"reload": c.Reload,
    b"shutdown": c.Shutdown,
    b"quit": c.Quit,
}

_WITH_ARGS = {
    b"delete": _delete,
    b"flush_all": _flush_all,
    b"flush": lambda args: c.Flush(_one_queue(args, "flush")),
    b"flush_expired": lambda args: c.FlushExpired(_one_queue(args, "flush_expired")),
    b"dump_stats": _dump_stats,
    b"monitor": _monitor,
    b"confirm": _confirm,
    b"status": _status,
}

# The command words as clients send them: a line starting with one needs no lower().
_LOWER = frozenset([b"set", b"get", b"gets", *_SIMPLE, *_WITH_ARGS])
