"""One client connection: bytes in, commands executed in order, replies out in order.

Thin asyncio wiring around the sans-IO parser and the pure queue core. Three things make it
more than a loop:

- Blocking reads. `get q/t=500` with an empty queue parks the connection: it stops executing
  commands (later pipelined ones wait in the buffer, as Kestrel's serial dispatcher made them)
  and joins the queue's FIFO of waiters until an item arrives or the timer fires.
- Durability. A reply to a command that wrote to an `always` journal is held until the store's
  group fsync has covered that write: after each batch of commands the connection takes the
  ledger's `always_seq` as the seq its replies need and, unless it is durable already, asks the
  ledger to call it back once it is (`when_durable`). Replies stay in order, so later replies
  wait too.
- Errors. Every failure is a `KestrelqError`, turned into wire bytes by `error_reply()`, the
  one place that decides what an error looks like to a client. A command sent with `noreply`
  gets no reply, error or not: the error is logged instead.
- Limits. A data block still arriving takes its size from the server's pending-bytes budget
  (or the connection stops reading until it can); a command that has not arrived whole within
  read_timeout_s of its first byte, replies the client leaves unread that long, and (when
  set) idle_timeout_s between commands close the connection. The server's tick checks them.
- Long replies. `stats` and `dump_stats` are written part by part (see server.stats), with the
  event loop free between parts; later commands wait, as behind a blocking get.

The connection sees the server only through `ServerState` (server/state.py); it never imports
`server.py`, which creates connections and nothing else of theirs.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import cast

from kestrelq import WIRE_VERSION
from kestrelq.errors import (
    AccessDenied,
    AuthenticationFailed,
    ItemRejected,
    ItemTooLarge,
    JournalCorrupt,
    JournalError,
    JournalFull,
    KestrelqError,
    ProtocolError,
    QueueError,
    QueueFull,
    ReadWhileOpen,
    ServerUnavailable,
    ShuttingDown,
    TooManyOpenReads,
    TooManyQueues,
)
from kestrelq.protocol import commands as c
from kestrelq.protocol import replies
from kestrelq.protocol.commands import ServerStatus
from kestrelq.protocol.parser import ServerConnection
from kestrelq.queue.collection import GetOptions, Session, expiry_ms
from kestrelq.queue.item import Item
from kestrelq.server import stats, status
from kestrelq.server.state import ServerState

logger = logging.getLogger(__name__)

# Stop reading from a parked connection once this much is buffered behind it.
_PAUSE_BUFFER_BYTES = 1 << 20
# Replies past this many bytes are handed to the transport at once (whose own high-water mark
# then pauses a client that does not read), or, while they wait for a group fsync, stop the
# connection's commands until it is done.
_MAX_HELD_BYTES = 256 << 10
# Replies up to this size go out joined: one copy is cheaper than an iovec per reply part.
_JOIN_REPLY_BYTES = 64 << 10
# A get hit's data up to this size is joined with its VALUE line and END at once.
_JOIN_VALUE_BYTES = 4 << 10
# After an error that closes the connection, what the client still sends is read and dropped
# for at most this long (and this much) before the socket is closed: closing with unread input
# makes the kernel send a reset, which can destroy the error reply before the client reads it.
_LINGER_S = 2.0
_LINGER_BYTES = 1 << 20
# The largest data block taken before login. A login is `user password`; without this cap a
# stranger's `set x 0 0 <max_item_bytes>` took that much of the pending-bytes budget (or waited
# in its line) before ever logging in.
_MAX_LOGIN_BYTES = 1 << 10
_UP = ServerStatus.UP
# What is left of a `get q/close/open` refused by a QUIESCENT server: the confirm.
_CLOSE_ONLY = GetOptions(close=True)


def error_reply(exc: KestrelqError) -> tuple[bytes, bool]:
    """The wire reply for an error, and whether the connection must be closed after it."""
    if isinstance(exc, AccessDenied):
        return replies.error("CLIENT_ERROR", exc.reason), exc.close
    if isinstance(exc, ProtocolError):
        return replies.error(exc.word, exc.reason), exc.close
    if isinstance(exc, ServerUnavailable):
        # Closed, as Kestrel does: a client that sees its connection go takes the server out
        # of its rotation and sends to (or reads from) another one.
        return replies.error("SERVER_ERROR", exc.reason), True
    if isinstance(exc, TooManyOpenReads | ReadWhileOpen):
        return replies.error("ERROR", str(exc)), True
    if isinstance(exc, QueueFull | ItemRejected | ShuttingDown):
        return replies.NOT_STORED, False
    if isinstance(exc, TooManyQueues):
        return replies.error("SERVER_ERROR", str(exc)), False
    if isinstance(exc, QueueError):
        return replies.error("CLIENT_ERROR", str(exc)), False
    if isinstance(exc, JournalFull):
        return replies.error("SERVER_ERROR", str(exc)), False
    if isinstance(exc, JournalCorrupt):
        return replies.error("SERVER_ERROR", f"journal damaged: {exc.path} at {exc.offset}"), False
    if isinstance(exc, JournalError):
        return replies.error("SERVER_ERROR", f"journal write failed: {exc}"), False
    return replies.error("SERVER_ERROR", str(exc)), False


@dataclass(slots=True)
class Parked:
    """A blocking get or a monitor waiting for items."""

    command: c.Get | c.Monitor
    queue: str
    # By its bare name: Debian's mypyc (1.0, which compiles the images' hot path) looks a
    # dataclass field's class up under that name in the module's globals.
    timer: TimerHandle
    remaining: int = 0  # monitor: items still to send


class QueueProtocol(asyncio.Protocol):
    def __init__(self, server: ServerState) -> None:
        self.server = server
        self._ledger = server.store.ledger
        cfg = server.config
        self.parser = ServerConnection(cfg.max_line_bytes, cfg.max_item_bytes)
        self.session = Session(server.collection, cfg.max_open_reads)
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self._out_bytes = 0
        self.need_seq = 0  # the seq whose fsync the replies in `out` wait for
        self._sync_wait = False  # a callback from the ledger is due
        self.parked: Parked | None = None
        self.closing = False
        self.eof = False
        self._paused = False
        self._write_paused = False
        # Who logged in (kestrelq.server.auth); until then, with an auth file, only a login.
        self.user: str | None = None
        self.must_login = server.security.access.users is not None
        if self.must_login:
            self.parser.max_item_bytes = min(cfg.max_item_bytes, _MAX_LOGIN_BYTES)
        # A long reply being written part by part, and whether its next part is scheduled.
        self._streaming: Iterator[tuple[bytes, bool]] | None = None
        self._step_scheduled = False
        # Bytes taken from the server's pending budget for the block being received, and
        # whether reading stopped to wait for the budget.
        self._reserved = 0
        self._budget_wait = False
        # Event-loop times for the timeouts: when the command now arriving started (None
        # when none is), when the last command finished, when writing stalled.
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._command_since: float | None = None
        self._active_at = now
        self._write_paused_at = now
        self._lingering = -1  # bytes dropped since a closing error; -1 when not lingering
        self._eof_sent = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        server.counters.total_connections += 1
        if len(server.connections) >= server.config.max_connections:
            self.transport.write(replies.error("SERVER_ERROR", "too many connections"))
            self.transport.close()
            return
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.server.counters.bytes_read += len(data)
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > _LINGER_BYTES and self.transport is not None:
                self.transport.abort()
            return
        self.parser.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        # The client is done sending: answer what it sent, then close. One that is blocked in
        # a get has gone away (a socket close looks the same as a half-close): like Kestrel,
        # cancel its wait, so that an item never goes to a reader that is not there.
        if self._lingering >= 0:
            return False  # the client read our last words and hung up: close
        self.eof = True
        self._process()
        if self._sync_wait:
            # Replies held for the group fsync: run it now, not at the end of the turn. A TLS
            # transport ignores a True from here and shuts down once we return (a close_notify
            # is a half-close to asyncio and uvloop alike), which would drop those replies.
            self.server.sync_now()
        return self.parked is None and self._streaming is None

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        self._unpark()
        self._streaming = None
        self._release_budget()
        try:
            self.session.release_all()
            if server.store.unwritten:
                server.store.write_pending()
        except KestrelqError:
            # The read stays open in memory; the journal still shows it open, so a restart
            # puts it back. Nothing is lost, it is only delayed.
            logger.exception("could not return open reads of a closed connection")
        self.transport = None
        server.connection_closed(self)

    @property
    def waiting(self) -> bool:
        """Blocked in a get or monitor, and still connected."""
        return self.parked is not None and self.transport is not None

    def abort(self) -> None:
        """Drop the connection without a word (a timeout, or the journal failed)."""
        if self.transport is not None:
            self.transport.abort()

    def close_now(self) -> None:
        """Drop the connection and return its open reads now (shutdown ran out of time)."""
        if self.transport is not None:
            self.transport.abort()
            self.connection_lost(None)

    # -- command loop ----------------------------------------------------------------------

    def _process(self) -> None:
        server = self.server
        parser = self.parser
        # One clock reading per batch: the commands of one read arrived at the same moment.
        now_ms = server.now_ms()
        done = 0
        while (
            self.parked is None
            and self._streaming is None
            and not self.closing
            and not self._budget_wait
            and not self._write_paused  # _backed_up(), without a call per command
            and self._out_bytes <= _MAX_HELD_BYTES
        ):
            command: c.Command | None = None
            try:
                command = parser.next_command()
                if command is None:
                    self.closing = self.eof
                    break
                done += 1
                self._execute(command, now_ms)
            except ItemTooLarge as exc:
                if self.must_login:
                    # Past _MAX_LOGIN_BYTES before login: no login can be that big.
                    logger.warning("authentication failure: %s before login", exc)
                    self._error(AuthenticationFailed(), noreply=exc.noreply)
                else:
                    self._error(exc, noreply=exc.noreply)
            except KestrelqError as exc:
                self._error(exc, noreply=getattr(command, "noreply", False))
            except Exception:
                # A bug, not the client's fault: log it, tell the client, drop this connection
                # only. The server and every other connection go on.
                logger.exception("internal error on a connection; closing it")
                if not getattr(command, "noreply", False):
                    self._reply(replies.error("SERVER_ERROR", "internal error"))
                self.closing = True
            if self._out_bytes > _MAX_HELD_BYTES:
                self._flush()  # may pause this connection (unread or awaiting an fsync)
        if done:
            # Conservative and cheap: the replies of this batch wait for every `always` append
            # made so far (in one turn, one group fsync covers them all anyway).
            self.need_seq = self._ledger.always_seq
        self._account(done)
        if self._streaming is not None:
            self._schedule_step()
        if (
            self._paused
            or self.parked is not None
            or self._streaming is not None
            or self._budget_wait
            or self._write_paused
            or self._out_bytes > _MAX_HELD_BYTES
        ):
            self._flow_control()  # only then can it have anything to change
        self._flush()

    def _account(self, done: int) -> None:
        """After a batch: budget for a block now arriving, and the times the timeouts use."""
        parser = self.parser
        block = parser.block_size
        if block != self._reserved and not self._budget_wait:
            self._release_budget()
            if block:
                budget = self.server.pending
                if budget.try_take(block):
                    self._reserved = block
                else:
                    self._budget_wait = True
                    budget.wait(block, self._budget_granted)
        in_command = parser.in_command
        if done or not in_command:
            now = self._loop.time()
            if done:
                self._active_at = now
            self._command_since = now if in_command else None
        elif self._command_since is None:
            self._command_since = self._loop.time()

    def _budget_granted(self) -> None:
        # Called by the budget, maybe from inside another connection's turn: only note it,
        # and carry on reading from the event loop.
        self._reserved = self.parser.block_size
        self._budget_wait = False
        self._command_since = None  # the wait was ours, not the client's
        asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if self.transport is not None:
            self._process()

    def _release_budget(self) -> None:
        if self._budget_wait:
            self._budget_wait = False
            self.server.pending.cancel(self._budget_granted)
        if self._reserved:
            reserved, self._reserved = self._reserved, 0
            self.server.pending.give_back(reserved)

    def check_timeouts(self, now: float) -> str | None:
        """Why this connection should be closed at event-loop time `now`, or None.

        A blocked get or monitor is never idle, and time spent waiting for an fsync or a long
        reply's next part is the server's, not the client's. Time waiting for the budget
        counts against read_timeout_s (from the command's first byte; a grant starts a new
        window for the block): otherwise a stranger, or anyone, could sit in the budget's
        line for ever, and a line of them would be closed only one read timeout at a time.
        """
        cfg = self.server.config
        if self.transport is None or self._lingering >= 0:
            return None
        read_s, idle_s = cfg.read_timeout_s, cfg.idle_timeout_s
        if self._write_paused:
            if read_s and now - self._write_paused_at > read_s:
                return f"replies unread for {read_s:g} s"
            return None
        if self.parked is not None or self._streaming is not None:
            return None
        if self._command_since is not None:
            if read_s and now - self._command_since > read_s and not self._backed_up():
                return f"command incomplete after {read_s:g} s ({self.parser.buffered} bytes)"
            return None
        if idle_s and not self.out and now - self._active_at > idle_s:
            return f"idle for {idle_s:g} s"
        if self.must_login and read_s and now - self._active_at > read_s:
            # Without a deadline, a stranger who never logs in holds a connection slot forever.
            return f"no login in {read_s:g} s"
        return None

    def _execute(self, cmd: c.Command, now_ms: int) -> None:
        server = self.server
        if self.must_login:
            self._login(cmd)
            return
        if server.status is not _UP:
            self._check_status(cmd, now_ms)
        # Keyword patterns, not positional (here and in _admin): Debian's mypyc (1.0, which
        # compiles the images' hot path) crashes on a positional pattern of a dataclass.
        match cmd:
            case c.Get():
                self._get(cmd, now_ms)
            case c.Set():
                self._set(cmd, now_ms)
            case c.Shutdown():
                server.security.access.check(self.user, cmd)
                self.closing = True
                server.request_shutdown("shutdown command")
            case c.Quit():
                self.closing = True
            case c.Monitor(queue=queue, seconds=seconds, max_items=max_items):
                limit = self.session.monitor_limit(max_items)
                self._monitor(cmd, queue, now_ms, seconds * 1000, limit)
            case c.Confirm(queue=queue, count=count):
                ok = self.session.confirm(queue, count)
                self._reply(replies.END if ok else replies.ERROR)
            case _:
                self._admin(cmd, now_ms)

    def _check_status(self, cmd: c.Command, now_ms: int) -> None:
        """Refuse what the server's status refuses (server/status.py)."""
        try:
            status.check(self.server.status, cmd)
        except ServerUnavailable:
            if isinstance(cmd, c.Get) and cmd.options.close:
                # The worker handled the message it confirms: confirm it, refuse the next.
                self.session.get(cmd.queue, _CLOSE_ONLY, now_ms)
            raise

    def _admin(self, cmd: c.Command, now_ms: int) -> None:
        """Queue maintenance and server information commands."""
        server = self.server
        coll = server.collection
        server.security.access.check(self.user, cmd)
        match cmd:
            case c.Delete(queue=queue, noreply=noreply):
                coll.delete(queue)
                self.session.open_xids.pop(queue, None)
                if not noreply:
                    self._reply(replies.DELETED)
            case c.Flush(queue=queue):
                coll.queue(queue).flush()
                self._reply(replies.END)
            case c.FlushAll(noreply=noreply):
                coll.flush_all()
                if not noreply:
                    self._reply(replies.FLUSHED_ALL)
            case c.FlushExpired(queue=queue):
                self._reply(replies.count(coll.flush_expired(queue, now_ms)))
            case c.FlushAllExpired():
                self._reply(replies.count(coll.flush_all_expired(now_ms)))
            case c.Stats():
                self._stream(stats.stats_parts(server))
            case c.DumpStats(queues=queues):
                self._stream(stats.dump_stats_parts(server, queues))
            case c.Version():
                self._reply(replies.version(WIRE_VERSION))
            case c.Reload():
                server.reload()
                self._reply(replies.RELOADED)
            case c.GetStatus():
                self._reply(replies.status(server.status.value))
            case c.SetStatus(status=new):
                server.set_status(new)
                self._reply(replies.END)

    def _login(self, cmd: c.Command) -> None:
        try:
            self.user = self.server.security.access.check(None, cmd)
        except AuthenticationFailed:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            logger.warning("authentication failure from %s", peer)
            if isinstance(cmd, c.Set) and cmd.noreply:
                self.closing = True  # no reply was asked for; the close is the answer
                return
            raise
        self.must_login = False
        self.parser.max_item_bytes = self.server.config.max_item_bytes
        if isinstance(cmd, c.Set) and not cmd.noreply:
            self._reply(replies.STORED)

    def _set(self, cmd: c.Set, now_ms: int) -> None:
        if self.server.shutting_down:
            raise ShuttingDown("server shutting down")
        expires_ms = expiry_ms(cmd.exptime, now_ms) if cmd.exptime else 0
        item = Item(cmd.data, cmd.flags, now_ms, expires_ms)
        self.server.collection.add(cmd.queue, item, now_ms)
        if not cmd.noreply:
            self._reply(replies.STORED)

    def _get(self, cmd: c.Get, now_ms: int) -> None:
        item = self.session.get(cmd.queue, cmd.options, now_ms)
        if item is not None:
            self._reply_value(cmd.key, item.flags, item.data)
        elif cmd.options.timeout_ms > 0 and cmd.options.fetches:
            # `close` is done; the retries when an item arrives only fetch.
            retry = replace(cmd, options=replace(cmd.options, close=False))
            self._park(retry, cmd.queue, cmd.options.timeout_ms)
        else:
            self._reply(replies.END)

    def _monitor(self, cmd: c.Monitor, queue: str, now_ms: int, window_ms: int, limit: int) -> None:
        remaining = limit - self._monitor_batch(queue, now_ms, limit)
        if remaining <= 0 or not self.session.can_open(queue) or window_ms <= 0:
            self._reply(replies.END)
            return
        self._park(cmd, queue, window_ms, remaining)

    def _monitor_batch(self, queue: str, now_ms: int, limit: int) -> int:
        key = queue.encode()
        items = self.session.open_batch(queue, now_ms, limit)
        for item in items:
            # Each item is a whole get reply (its own END); one more END closes the stream.
            self._reply_value(key, item.flags, item.data)
        return len(items)

    def _error(self, exc: KestrelqError, noreply: bool = False) -> None:
        reply, close = error_reply(exc)
        if noreply or (isinstance(exc, ProtocolError) and exc.noreply):
            # A reply the client does not read would be taken as the answer to its next
            # command: say it in the log instead (and close when the stream is lost).
            logger.warning("noreply command refused%s: %s",
                           " (closing the connection)" if close else "", exc)  # fmt: skip
        else:
            self._reply(reply)
        if close:
            self.closing = True
            self._lingering = 0
            logger.debug("closing connection after error: %s", exc)

    # -- long replies ----------------------------------------------------------------------

    def _stream(self, parts: Iterator[tuple[bytes, bool]]) -> None:
        # The first part now: a server with a few queues answers in one part, as before.
        part, last = next(parts)
        self._reply(part)
        if not last:
            self._streaming = parts

    def _schedule_step(self) -> None:
        if not self._step_scheduled and not self._backed_up():
            self._step_scheduled = True
            asyncio.get_running_loop().call_soon(self._step)

    def _step(self) -> None:
        self._step_scheduled = False
        parts = self._streaming
        if parts is None or self.transport is None:
            return
        if self._backed_up():
            return  # resume_writing or synced() carries on
        part, last = next(parts)
        self._reply(part)
        if last:
            self._streaming = None
            self._active_at = asyncio.get_running_loop().time()
        self._process()

    # -- parking (blocking reads) ---------------------------------------------------------

    def _park(
        self, cmd: c.Get | c.Monitor, queue: str, timeout_ms: int, remaining: int = 0
    ) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout_ms / 1000, self._timed_out)
        self.parked = Parked(cmd, queue, timer, remaining)
        self.server.waiters.add(queue, self)

    def wake(self) -> bool:
        """An item arrived on the queue this connection waits on; True if it took one."""
        parked = self.parked
        if parked is None or self.transport is None:
            return False
        if self.server.status is ServerStatus.QUIESCENT:
            return False  # it waits on (its timeout ends it) but takes nothing
        now_ms = self.server.now_ms()
        try:
            if isinstance(parked.command, c.Get):
                item = self.session.get(parked.queue, parked.command.options, now_ms)
                if item is None:
                    return False
                self._unpark()
                self._reply_value(parked.command.key, item.flags, item.data)
            else:
                sent = self._monitor_batch(parked.queue, now_ms, parked.remaining)
                if not sent:
                    return False
                parked.remaining -= sent
                self.need_seq = self._ledger.always_seq
                if parked.remaining > 0 and self.session.can_open(parked.queue):
                    # Still monitoring: back in line for the next item.
                    self.server.waiters.add(parked.queue, self)
                    self._flush()
                    return True
                self._unpark()
                self._reply(replies.END)
        except KestrelqError as exc:
            self._unpark()
            self._error(exc)
        self.need_seq = self._ledger.always_seq
        self._process()
        return True

    def _timed_out(self) -> None:
        if self.parked is None:
            return
        self._unpark()
        self._reply(replies.END)
        self._process()

    def _unpark(self) -> None:
        parked, self.parked = self.parked, None
        if parked is not None:
            parked.timer.cancel()
            self.server.waiters.remove(parked.queue, self)
            self._active_at = asyncio.get_running_loop().time()  # a blocked get is not idle

    def shutdown(self) -> None:
        """Server shutdown: answer a parked read now, then close after the replies."""
        if self.parked is not None:
            self._unpark()
            self._reply(replies.END)
        if self._streaming is not None:
            for part, _ in self._streaming:
                self._reply(part)
            self._streaming = None
        self.closing = True
        self._flush()

    # -- output ----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop executing its commands (and reading
        # them) until it does, so that replies cannot pile up in memory.
        self._write_paused = True
        self._write_paused_at = asyncio.get_running_loop().time()
        self._flow_control()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._process()

    def _reply(self, chunk: bytes) -> None:
        self.out.append(chunk)
        self._out_bytes += len(chunk)

    def _reply_value(self, key: bytes, flags: int, data: bytes) -> None:
        """A get hit. A small one in one piece (one copy is cheaper than an iovec per part),
        a big one in three, so that its data is never copied."""
        if len(data) <= _JOIN_VALUE_BYTES:
            self._reply(replies.value_joined(key, flags, data))
        else:
            chunks = replies.value(key, flags, data)
            self.out += chunks
            self._out_bytes += len(data) + len(chunks[0]) + len(chunks[2])

    def _backed_up(self) -> bool:
        """Too much output is waiting (unread by the client, or held for an fsync)."""
        return self._write_paused or self._out_bytes > _MAX_HELD_BYTES

    def _flow_control(self) -> None:
        if self.transport is None:
            return
        should_pause = (
            self._backed_up()
            or self._budget_wait
            or (
                (self.parked is not None or self._streaming is not None)
                and self.parser.buffered > _PAUSE_BUFFER_BYTES
            )
        )
        if should_pause and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        elif not should_pause and self._paused:
            self.transport.resume_reading()
            self._paused = False

    def _flush(self) -> None:
        store = self.server.store
        if store.unwritten:
            # The batched records of the commands answered here (see JournalStore) go to
            # disk first: one writev per queue for a whole pipelined batch.
            store.write_pending()
        transport = self.transport
        if transport is None:
            return
        if self.out:
            if not self._ledger.durable(self.need_seq):
                if not self._sync_wait:
                    self._sync_wait = True
                    self._ledger.when_durable(self.need_seq, self.synced)
                    self.server.sync_soon()
                return
            self.server.counters.bytes_written += self._out_bytes
            if self._out_bytes <= _JOIN_REPLY_BYTES:
                transport.write(b"".join(self.out))
            else:
                transport.writelines(self.out)  # big items are not copied
            self.out.clear()
            self._out_bytes = 0
        if self.closing and not transport.is_closing() and not self._eof_sent:
            if self._lingering >= 0 and not self.eof and transport.can_write_eof():
                self._eof_sent = True
                # Our replies go out, then EOF; the connection closes when the client closes
                # its side (eof_received), or after _LINGER_S.
                transport.write_eof()
                asyncio.get_running_loop().call_later(_LINGER_S, transport.abort)
                self._flow_control()
                if self._paused:
                    transport.resume_reading()  # read (and drop) until the client's EOF
                    self._paused = False
            else:
                transport.close()

    def synced(self) -> None:
        """The group fsync this connection's replies waited for is done (ledger callback)."""
        self._sync_wait = False
        if self.transport is None:
            return  # gone meanwhile
        self._flush()
        if (
            self.out == []
            and self.parked is None
            and (self.parser.buffered or self._streaming is not None)
        ):
            self._process()  # commands (or a long reply) held back while replies waited
        else:
            self._flow_control()  # reading may have stopped while the replies were held
