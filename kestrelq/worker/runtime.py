"""The worker loop: reliable reads from one queue, one handler call per message.

Theory of operation. Rules first:

1. One pymemcache `Client` (one TCP connection) per queue server, never a pool. An open read
   belongs to the connection that opened it: `/close` and `/abort` act on the open reads of the
   connection they arrive on, nothing else; so the worker confirms or gives back a message on
   the connection of the server that delivered it, and confirms it there before it asks
   another server for the next one.
2. The steady state is one round trip per message: `get Q/close/open/t=<ms>` confirms the
   message handled last and opens the next one. `/close` is only sent when this connection
   holds a handled, unconfirmed message (`confirm_pending`).
3. When the connection breaks (server killed, restarted, network error, timeout), the server
   puts the open read back at the head of the queue. The worker cannot confirm it any more:
   a `/close` on the new connection would confirm nothing (that connection holds no open
   read), and if it were bundled with `/open` it would only make the log lie. So on any
   connection error the worker forgets the pending confirm, counts the message as
   redelivered, closes the client, and the first request on the new connection is a plain
   `get Q/open/t=`. The message will be handled again by someone: delivery is at-least-once,
   and handlers must be idempotent.
4. A handler that raises, or runs past its time limit (rule 7), has failed. The worker logs ONE
   line for it (the traceback only at DEBUG: a poison message must not flood the log), then
   waits before giving the message back with `get Q/abort`: exponential in how often this
   worker saw that message id fail (`retry_delay_s` doubling up to `retry_delay_max_s`, with
   jitter), holding the open read meanwhile, so a poison message cannot spin in a hot loop
   between the queue and a pool of workers, and the other workers keep serving the rest of
   the queue. The server counts deliveries and moves a message that was opened
   `max_deliveries` times without a close to the dead-letter queue. When the worker is told
   that limit too (`max_deliveries`), the failure that reaches it says "gave up after N
   deliveries" and names the dead-letter queue. The count is this worker's own (the server
   does not send it): with a pool, the message is seen by several workers and the line may
   come from none of them; the server's dead-letter queue is the record that counts.
5. Stop: the first SIGTERM/SIGINT (or `request_stop()`) is warm: the current message is
   finished and confirmed with `get Q/close`, then the loop exits with 0. A message that
   arrives after the stop request (the blocking get was already on the wire) is given back
   with `/abort` untouched. The warm stop lasts at most `stop_timeout_s`: supervisord sends
   SIGKILL `stopwaitsecs` after its SIGTERM, so the worker must give up first and on its own
   terms, with the message given back by an `/abort` it sends, and a line saying so. Past
   the stop timeout, or at a second signal, the stop is cold: a running handler is
   interrupted (`ColdShutdown`, a BaseException so `except Exception` in a handler cannot
   swallow it), the message is given back with `/abort`, and the loop exits with 1.
6. A dead queue server never kills the worker: it reconnects with capped exponential backoff
   (with jitter, so a pool of workers does not reconnect in lockstep), logs every failed
   attempt and the recovery, and a stop request interrupts the backoff wait. With several
   servers the backoff is per server: a dead one is left out until its next attempt, and the
   worker waits only when every server is down.
7. Time limits. Every message has one: its envelope's `time_limit_s` (capped at
   `max_time_limit_s`, so a message cannot grant itself for ever), else `time_limit_s`
   (default 5 minutes; 0 turns limits off). It must stay below the server's open-read
   timeout (`open_timeout_ms`, 10 minutes by default), or the server takes the message back
   from a worker that is still on it and hands it to another. How a handler is interrupted:
   a handler running in this thread cannot be killed safely from another thread, so the
   limit is a SIGALRM timer (`setitimer`) whose Python handler raises `TaskTimeout` in the
   main thread. That stops Python code and blocking calls alike (the signal interrupts the
   system call and the exception propagates; PEP 475 retries only when the handler returns),
   the handler's `finally` blocks run, the process and its connection stay up, and the
   message fails through the normal path of rule 4. Rejected: one child process per message
   (a fork and a pickled result per message, and handlers lose the state they keep between
   messages: connections, caches, loaded models); exiting the process at once on every
   timeout (each slow task would cost a restart and a reconnect, and the failure would
   not be counted or logged as one). SIGALRM cannot reach
   code that never returns to the interpreter (a C extension's loop, a masked signal), so a
   watchdog thread is the backstop: if the handler is still running `HARD_GRACE_S` after its
   deadline, it logs why and exits the process (`EXIT_STUCK`, 70). The connection closes,
   the server gives the open read back, and supervisord starts a fresh worker. The same
   timer and watchdog enforce `stop_timeout_s`. Limits need the main thread and the signal
   handlers: with `handle_signals=False` (embedding) they are not enforced, and the start
   line says so.
8. Log lines. Every line starts with the worker's name (supervisord's process name, from
   `SUPERVISOR_PROCESS_NAME`, else host:pid), and every line about a message carries
   `msg=<id>`; a plain-text message's line shows its text (`text="..."`, cut at 200
   characters). Whatever comes from a message, including what the handler returns or
   raises, is escaped (`kestrelq.worker.message.escape`), so no message can add a line.

9. Several servers (queue servers never talk to each other: every worker reads from every
   one). The worker takes turns over the servers from one thread: it stays on a server while
   that server has messages, for at most `RUN_MAX` in a row (so a busy server cannot starve
   the others), and moves on when it is empty. After a message it sweeps the others with
   non-blocking gets; only when a whole round came back empty does it block, for
   `idle_slice_ms` on each server in turn, so a message on any server waits at most about
   (N-1) slices to be seen. Rejected: one reader thread per server feeding the handler loop.
   A reader that blocks in `get/open` holds the message it receives open until the handler
   is free, so each worker would sit on up to N-1 messages that other workers could run
   (delayed behind a handler that may take minutes, counted as deliveries, timed out by the
   server), and time limits and stop signals need the main thread anyway. A dead server
   delays nothing on the others: it is skipped until its backoff passes (a refused connection
   costs nothing; an address that swallows packets costs `connect_timeout_s` per attempt).
   A single server keeps the one blocking `get/close/open/t=wait_ms` per message.

Counters in the shutdown line: `processed` = handler returned, `failed` = handler raised or
ran past its time limit,
`redelivered` = messages handed back to the queue to be delivered again (aborted after a
failure or at a stop, or held by a connection that broke before the confirm was answered).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from kestrelq.credentials import Credentials, memcache_client
from kestrelq.servers import Address, Entry, ServerList
from kestrelq.worker.message import ID_MAX_CHARS, MessageInfo, describe, escape
from kestrelq.worker.metrics import Metrics

logger = logging.getLogger(__name__)

Handler = Callable[[bytes], object]
ClientFactory = Callable[[Address], Any]
Servers = ServerList | str | Sequence[str | Address | Entry]

EXIT_OK = 0
EXIT_COLD = 1
EXIT_STUCK = 70  # EX_SOFTWARE: the watchdog ended a handler that SIGALRM could not reach

DEFAULT_TIME_LIMIT_S = 300.0
# Below the server's default open-read timeout (10 minutes), with room for the abort.
DEFAULT_MAX_TIME_LIMIT_S = 540.0
# Below the stopwaitsecs (30) that `kestrelq conf` renders by default.
DEFAULT_STOP_TIMEOUT_S = 25.0
DEFAULT_RETRY_DELAY_S = 1.0
DEFAULT_RETRY_DELAY_MAX_S = 60.0
HARD_GRACE_S = 5.0
# How many failing message ids the worker remembers for its retry delays.
FAILURES_REMEMBERED = 1024
RESULT_MAX_CHARS = 300
# With several servers: the most messages taken from one server in a row (rule 9).
RUN_MAX = 16
DEFAULT_IDLE_SLICE_MS = 100


class ColdShutdown(BaseException):
    """Raised inside a running handler by the second stop signal or the stop timeout."""


class TaskTimeout(BaseException):
    """Raised inside a running handler when its time limit passes.

    A BaseException, so that `except Exception` in a handler does not swallow it.
    """


@dataclass(slots=True)
class _Server:
    """One queue server as the worker sees it: its connection and its health."""

    address: Address
    client: Any = None
    confirm_pending: bool = False  # this connection holds a handled, unconfirmed message
    failures: int = 0
    down_since: float = 0.0
    retry_at: float = 0.0
    last_error: BaseException | None = None

    @property
    def where(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class WorkerCounts:
    processed: int = 0
    failed: int = 0
    redelivered: int = 0
    reconnects: int = 0


def backoff_delay_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Capped exponential delay before attempt `attempt` (1-based), without jitter."""
    return float(min(max_s, initial_s * (2 ** max(0, min(attempt, 64) - 1))))


def default_worker_name() -> str:
    """supervisord's name for this process, else host:pid."""
    return os.environ.get("SUPERVISOR_PROCESS_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class _Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the worker's name in front of every line."""

    def __init__(self, base: logging.Logger, prefix: str) -> None:
        super().__init__(base, {})
        # Escaped, and % doubled: the prefix becomes part of a %-format string.
        self.prefix = escape(prefix, 64).replace("%", "%%")

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"{self.prefix} {msg}", kwargs


class _Watchdog:
    """Calls `on_expire` from its own thread if a deadline passes before it is disarmed."""

    def __init__(self, on_expire: Callable[[], None]) -> None:
        self._on_expire = on_expire
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._waiting_until: float | None = None
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float) -> None:
        with self._cond:
            self._deadline = deadline
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="kestrelq-worker-watchdog", daemon=True
                )
                self._thread.start()
            # Wake the thread only if it would wake too late. Deadlines mostly move later,
            # message after message, and the thread rechecks when its wait runs out: so it
            # wakes about once per time limit, not once per message.
            if self._waiting_until is None or deadline < self._waiting_until:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._waiting_until = None
                    self._cond.wait()
                    continue
                remaining_s = self._deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                self._waiting_until = self._deadline
                self._cond.wait(remaining_s)
        self._on_expire()


class Worker:
    """Consume one queue with reliable reads and run `handler` on each message.

    Args:
        queue: queue name.
        handler: called with the message bytes; raising means failure (the message is aborted
            after a retry delay). A `str` it returns is shown in the message's log line.
        name: the worker's name in its log lines (default: `default_worker_name()`).
        wait_ms: how long one blocking `get` waits for a message.
        burst: exit (0) as soon as the queue is empty instead of waiting for more.
        max_messages: exit (0) after handling this many messages (recycling; 0 = never).
        time_limit_s: a message's time limit unless its envelope sets one (0 = none). Keep it
            below the server's open-read timeout (10 minutes by default).
        max_time_limit_s: the most an envelope's `time_limit_s` may ask for.
        stop_timeout_s: the longest a warm stop waits for the running handler; keep it below
            supervisord's `stopwaitsecs`.
        retry_delay_s, retry_delay_max_s: the wait before a failed message is given back,
            doubling with each failure of the same message id seen here, up to the max.
        max_deliveries: the queue's `max_deliveries`, if known, so that the worker can say
            when it gives a message up to the dead-letter queue `dead_letter`.
        handle_signals: install SIGTERM/SIGINT/SIGALRM handlers in `run()`; embedders pass
            False and call `request_stop()` themselves (then time limits, the stop timeout
            and a cold stop cannot interrupt a handler).
        servers: every queue server to read from (a ServerList, "h1:p1,h2:p2", or addresses);
            default: the one at `host`:`port`.
        idle_slice_ms: with several servers, how long one blocking get waits on each in turn
            when all are empty (rule 9): the most a message on another server waits to be seen
            is about (N-1) times this.
        client_factory: builds the pymemcache client for an address (tests point it elsewhere).
        credentials: login and TLS (kestrelq.credentials); a refused login raises
            CredentialsRefused out of run(): it is not retried like a server that is down.
        metrics: told of every handler call and give-back (kestrelq.worker.metrics).
    """

    def __init__(
        self,
        queue: str,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 22133,
        name: str | None = None,
        wait_ms: int = 1000,
        burst: bool = False,
        max_messages: int = 0,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        max_time_limit_s: float = DEFAULT_MAX_TIME_LIMIT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
        retry_delay_max_s: float = DEFAULT_RETRY_DELAY_MAX_S,
        max_deliveries: int = 0,
        dead_letter: str = "",
        handle_signals: bool = True,
        connect_timeout_s: float = 2.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        client_factory: ClientFactory | None = None,
        credentials: Credentials | None = None,
        servers: Servers | None = None,
        idle_slice_ms: int = DEFAULT_IDLE_SLICE_MS,
        metrics: Metrics | None = None,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.servers = ServerList.of(servers if servers is not None else [Entry(host, port)])
        self.host = self.servers.entries[0].host
        self.port = self.servers.entries[0].port
        self.idle_slice_ms = idle_slice_ms
        self.name = name or default_worker_name()
        self.wait_ms = wait_ms
        self.burst = burst
        self.max_messages = max_messages
        self.time_limit_s = time_limit_s
        self.max_time_limit_s = max_time_limit_s
        self.stop_timeout_s = stop_timeout_s
        self.retry_delay_s = retry_delay_s
        self.retry_delay_max_s = retry_delay_max_s
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter or f"{queue}_dead"
        self.handle_signals = handle_signals
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.counts = WorkerCounts()
        self.metrics = metrics or Metrics()
        self.log = _Prefixed(logger, self.name)
        self._client_factory = client_factory or self._default_client
        self.credentials = credentials or Credentials()
        self._conns: dict[Address, _Server] = {}
        # The server whose connection holds the open read of the message being handled.
        self._holder: _Server | None = None
        self._turn = random.randrange(1 << 30)
        self._run = 0  # messages taken in a row from the current server
        self._empty_in_a_row = 0  # gets in a row that found nothing, over all servers
        self._known = 1
        self._stop = False
        self._cold = False
        self._in_handler = False
        self._signals_seen = 0
        self._wake = threading.Event()
        # Time limits (rule 7): deadlines on the monotonic clock, None when not running.
        self._enforce_limits = False
        self._task_deadline: float | None = None
        self._stop_deadline: float | None = None
        self._timed_out = False
        self._watchdog = _Watchdog(self._stuck)
        self._current: MessageInfo | None = None
        self._failed_ids: OrderedDict[str, int] = OrderedDict()

    # -- public API ------------------------------------------------------------------------

    def request_stop(self, cold: bool = False) -> None:
        """Ask the loop to stop: warm (finish and confirm the current message) or cold."""
        if self._stop and not cold:
            cold = True
        if cold:
            self._cold = True
        elif self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.stop_timeout_s
        self._stop = True
        self._wake.set()

    def run(self) -> int:
        """Run until stopped (or the queue is empty in burst mode); returns the exit code."""
        with self._signals():
            self.log.info(
                "pid %d consuming queue %r at %s (wait %d ms, time limit %s, stop timeout %gs%s)",
                os.getpid(),
                self.queue,
                self.servers,
                self.wait_ms,
                f"{self.time_limit_s:g}s" if self.time_limit_s else "none",
                self.stop_timeout_s,
                ", burst" if self.burst else "",
            )
            if not self._enforce_limits:
                self.log.warning(
                    "time limits and the stop timeout are not enforced: they need the main "
                    "thread and the worker's own signal handlers"
                )
            try:
                self._loop()
            except ColdShutdown:
                # The handler was interrupted; its message goes back to the head.
                self._give_back("cold shutdown interrupted the handler")
            self._finish()
        code = EXIT_COLD if self._cold else EXIT_OK
        c = self.counts
        self.log.info(
            "pid %d stopped (%s): processed=%d failed=%d redelivered=%d reconnects=%d",
            os.getpid(),
            "cold" if self._cold else "warm",
            c.processed,
            c.failed,
            c.redelivered,
            c.reconnects,
        )
        return code

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop:
            data = self._fetch()
            if data is None:
                if self.burst and self._all_empty():
                    self.log.info("queue %r is empty; burst mode ends", self.queue)
                    self._stop = True
                continue
            self._current = describe(data)
            if self._stopping():
                # Arrived after a stop request: not started, so hand it back untouched.
                self._give_back("stop requested before the handler started")
                return
            if self._run_handler(data, self._current):
                if self._holder is not None:
                    self._holder.confirm_pending = True
                if self.max_messages and self.counts.processed >= self.max_messages:
                    self.log.info("handled %d messages; exiting to be restarted", self.max_messages)
                    self._stop = True
            else:
                self._give_back("the handler failed")
            self._current = None

    def _stopping(self) -> bool:
        # A method, not the attribute: a signal handler may set it between two statements.
        return self._stop

    def _all_empty(self) -> bool:
        """Every server answered, and a whole round of gets found nothing (burst's end)."""
        down = any(s.failures for s in self._conns.values())
        return not down and self._empty_in_a_row >= self._known

    def _fetch(self) -> bytes | None:
        """One `get` on the server whose turn it is; None when it had nothing, on a connection
        error, or after waiting for a server to come back (all down)."""
        server = self._pick()
        if server is None:
            return None
        options = "close/open" if server.confirm_pending else "open"
        key = f"{self.queue}/{options}"
        if self._known == 1:
            key += f"/t={self.wait_ms}"
        elif self._empty_in_a_row >= self._known:
            # A whole round found nothing: block, but only for a slice (rule 9).
            key += f"/t={min(self.wait_ms, self.idle_slice_ms)}"
        self._holder = None
        try:
            value = self._command(server, key)
        except (OSError, MemcacheError) as exc:
            self._connection_lost(server, exc)
            self._next_server()
            return None
        # The reply proves the bundled /close was applied.
        server.confirm_pending = False
        self._recovered(server)
        if value is None:
            self._empty_in_a_row += 1
            self._next_server()
            return None
        self._empty_in_a_row = 0
        self._holder = server
        self._run += 1
        if self._run >= RUN_MAX:
            self._next_server()
        return value

    def _next_server(self) -> None:
        self._turn += 1
        self._run = 0

    def _pick(self) -> _Server | None:
        """The server whose turn it is, with any other server's pending confirm sent first;
        None (after waiting, interruptibly) when every server is in its backoff."""
        addresses = self.servers.addresses()
        self._known = max(1, len(addresses))
        for address in [a for a in self._conns if a not in addresses]:
            self._forget(self._conns[address])
        now = time.monotonic()
        up = [self._server(a) for a in addresses if self._server(a).retry_at <= now]
        if not up:
            waits = [self._conns[a].retry_at - now for a in addresses]
            # No address at all (a name that does not resolve yet): look again later.
            self._wake.wait(min(waits) if waits else self.backoff_max_s)
            return None
        server = up[self._turn % len(up)]
        for other in list(self._conns.values()):
            if other is not server and other.confirm_pending:
                self._confirm(other)
        return server

    def _server(self, address: Address) -> _Server:
        server = self._conns.get(address)
        if server is None:
            server = self._conns[address] = _Server(address)
        return server

    def _forget(self, server: _Server) -> None:
        """A server no longer in the list: confirm what it holds and close its connection."""
        if server.confirm_pending:
            self._confirm(server)
        self._close(server)
        self._conns.pop(server.address, None)

    def _confirm(self, server: _Server) -> None:
        try:
            self._command(server, f"{self.queue}/close")
            server.confirm_pending = False
        except (OSError, MemcacheError) as exc:
            self._connection_lost(server, exc)

    def _time_limit_s(self, info: MessageInfo) -> float:
        if info.time_limit_s is not None:
            return min(info.time_limit_s, self.max_time_limit_s)
        return self.time_limit_s

    def _run_handler(self, data: bytes, info: MessageInfo) -> bool:
        """Run the handler under its time limit; True if it returned in time."""
        limit_s = self._time_limit_s(info)
        started = time.monotonic()
        self._timed_out = False
        self._task_deadline = started + limit_s if limit_s else None
        error: BaseException | None = None
        try:
            self._in_handler = True
            self._arm()
            result = self.handler(data)
            self._in_handler = False
            if self._timed_out:
                # The handler caught TaskTimeout itself (a bare `except:`) and returned.
                raise TaskTimeout
        except (TaskTimeout, Exception) as exc:
            # First: the handler is over, so an alarm landing from here on must not raise
            # (_on_alarm checks this). A TaskTimeout raised inside this clause would escape
            # it, and _run_handler, and end the worker.
            self._in_handler = False
            error = exc
        finally:
            # Disarmed before the failure's retry delay, which is no part of the handler's time.
            self._in_handler = False
            self._task_deadline = None
            self._arm()
        elapsed_s = time.monotonic() - started
        self.metrics.handled(elapsed_s, ok=error is None)
        if error is not None:
            if isinstance(error, TaskTimeout):
                why = f"exceeded its time limit of {limit_s:g}s"
            else:
                why = f"{type(error).__name__}: {error}"
            self._failed(info, why, elapsed_s, error)
            return False
        self.counts.processed += 1
        self._failed_ids.pop(info.id, None)
        text = "" if info.text is None else f' text="{escape(info.text)}"'
        shown = "" if result is None else f": {escape(str(result), RESULT_MAX_CHARS)}"
        self.log.info(
            "msg=%s%s done in %.3fs%s", escape(info.id, ID_MAX_CHARS), text, elapsed_s, shown
        )
        return True

    def _failed(self, info: MessageInfo, why: str, elapsed_s: float, error: BaseException) -> None:
        """Count and log one failure (one line), then wait out its retry delay."""
        self.counts.failed += 1
        seen = self._failed_ids.pop(info.id, 0) + 1
        self._failed_ids[info.id] = seen
        while len(self._failed_ids) > FAILURES_REMEMBERED:
            self._failed_ids.popitem(last=False)
        msg_id = escape(info.id, ID_MAX_CHARS)
        text = "" if info.text is None else f' text="{escape(info.text)}"'
        head = "msg=%s%s failed after %.3fs (failure %d of this message here): %s"
        args: tuple[object, ...] = (msg_id, text, elapsed_s, seen, escape(why))
        # The traceback is for whoever debugs the handler, not for every poison delivery.
        self.log.debug("msg=%s: traceback of the failure", msg_id, exc_info=error)
        if self.max_deliveries and seen >= self.max_deliveries:
            self._failed_ids.pop(info.id, None)
            self.log.error(
                head + "; gave up after %d deliveries, the server moves it to %r",
                *args,
                seen,
                self.dead_letter,
            )
            return
        delay_s = backoff_delay_s(seen, self.retry_delay_s, self.retry_delay_max_s)
        delay_s *= random.uniform(0.5, 1.0)
        self.log.warning(head + "; giving it back in %.2fs", *args, delay_s)
        # Holding the open read while waiting: a stop request cuts the wait short.
        self._wake.wait(delay_s)

    def _give_back(self, why: str) -> None:
        """Return the open message to the head of the queue (`/abort`)."""
        server = self._holder
        if server is None:
            return  # nothing is open (the connection that held it broke already)
        self.counts.redelivered += 1
        self.metrics.redelivered()
        msg = "" if self._current is None else f"msg={escape(self._current.id, ID_MAX_CHARS)} "
        try:
            self._command(server, f"{self.queue}/abort")
            # A failure has had its line already; a stop's give-back is news.
            level = logging.DEBUG if why == "the handler failed" else logging.INFO
            self.log.log(level, "%sgiven back to %r: %s", msg, self.queue, why)
        except (OSError, MemcacheError) as exc:
            # The connection is gone, and with it the open read: the server has put the
            # message back already.
            self._connection_lost(server, exc)

    def _finish(self) -> None:
        """Confirm what was handled (warm stop, burst end) and close the connections."""
        for server in list(self._conns.values()):
            if server.confirm_pending:
                self._confirm(server)
            self._close(server)

    # -- connection ------------------------------------------------------------------------

    def _default_client(self, address: Address) -> Client:
        client: Client = memcache_client(
            address,
            self.credentials,
            connect_timeout=self.connect_timeout_s,
            # Longer than the blocking wait, so a slow reply is not mistaken for a dead server.
            timeout=self.wait_ms / 1000 + 5.0,
            no_delay=True,
        )
        return client

    def _command(self, server: _Server, key: str) -> bytes | None:
        if server.client is None:
            server.client = self._client_factory(server.address)
        value: bytes | None = server.client.get(key)
        return value

    def _close(self, server: _Server) -> None:
        if server.client is not None:
            try:
                server.client.close()
            except Exception:  # closing a broken socket may fail in odd ways; it is gone anyway
                pass
            server.client = None

    def _connection_lost(self, server: _Server, exc: BaseException) -> None:
        """Forget the connection and leave the server out for its backoff (rules 3 and 6)."""
        if server.confirm_pending:
            # Rule 3: the server requeued it when the connection broke; never /close it on
            # a new connection.
            self.counts.redelivered += 1
            self.metrics.redelivered()
            server.confirm_pending = False
            self.log.warning(
                "connection to %s lost before a handled message was confirmed; "
                "the queue will deliver it again",
                server.where,
            )
        self._close(server)
        server.failures += 1
        now = time.monotonic()
        if server.failures == 1:
            server.down_since = now
        server.last_error = exc
        delay_s = backoff_delay_s(server.failures, self.backoff_initial_s, self.backoff_max_s)
        delay_s *= random.uniform(0.5, 1.0)
        server.retry_at = now + delay_s
        if not self._stopping():
            self.log.warning(
                "queue at %s unavailable (%s: %s); reconnect attempt %d in %.2fs",
                server.where,
                type(exc).__name__,
                exc,
                server.failures,
                delay_s,
            )

    def _recovered(self, server: _Server) -> None:
        if server.failures:
            self.counts.reconnects += 1
            self.log.info(
                "reconnected to queue at %s after %d failed attempts (%.1fs)",
                server.where,
                server.failures,
                time.monotonic() - server.down_since,
            )
            server.failures = 0
            server.retry_at = 0.0

    # -- time limits -----------------------------------------------------------------------

    def _arm(self) -> None:
        """Set the SIGALRM timer and the watchdog to the running handler's next deadline."""
        if not self._enforce_limits:
            return
        deadlines = [d for d in (self._task_deadline, self._stop_deadline) if d is not None]
        if not self._in_handler or not deadlines:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._watchdog.disarm()
            return
        first = min(deadlines)
        # Never 0: that would disarm the timer instead of firing it at once.
        signal.setitimer(signal.ITIMER_REAL, max(first - time.monotonic(), 0.001))
        self._watchdog.arm(first + HARD_GRACE_S)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self._in_handler:
            return  # the handler returned just before the timer fired
        now = time.monotonic()
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._cold = True
            self._stop = True
            self.log.warning(
                "stop timeout (%gs) passed with the handler still running: cold shutdown",
                self.stop_timeout_s,
            )
            raise ColdShutdown
        if self._task_deadline is not None and now >= self._task_deadline:
            self._timed_out = True
            raise TaskTimeout
        self._arm()  # woken early (timer rounding): wait for the rest

    def _stuck(self) -> None:
        """The watchdog's last resort (rule 7): the handler ignored SIGALRM past its grace."""
        info = self._current
        self.log.critical(
            "msg=%s: the handler is still running %gs past its deadline and cannot be "
            "interrupted; exiting (%d) so that a fresh worker takes over; the server gives the "
            "message back when this connection closes",
            "?" if info is None else escape(info.id, ID_MAX_CHARS),
            HARD_GRACE_S,
            EXIT_STUCK,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_STUCK)

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Count first, log after: a second signal can run its handler nested inside this one
        # (Python checks for signals between bytecodes), and it must see this one counted,
        # or two quick signals would both be taken for the first.
        self._signals_seen += 1
        name = signal.Signals(signum).name
        if self._signals_seen == 1 and not self._stop:
            self.request_stop()
            self._arm()
            self.log.info(
                "%s: warm shutdown, finishing the current message (at most %gs)",
                name,
                self.stop_timeout_s,
            )
            return
        self.request_stop(cold=True)
        self.log.warning("%s again: cold shutdown, giving the current message back", name)
        if self._in_handler:
            raise ColdShutdown

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        self._enforce_limits = True
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._watchdog.disarm()
            self._enforce_limits = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)
