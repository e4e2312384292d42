"""The worker loop: reliable reads from one queue, one handler call per message.

Theory of operation. Rules first:

1. One pymemcache `Client` (one TCP connection) per worker, never a pool. An open read belongs
   to the connection that opened it: `/close` and `/abort` act on the open reads of the
   connection they arrive on, nothing else.
2. The steady state is one round trip per message: `get Q/close/open/t=<ms>` confirms the
   message handled last and opens the next one. `/close` is only sent when this connection
   holds a handled, unconfirmed message (`_confirm_pending`).
3. When the connection breaks (server killed, restarted, network error, timeout), the server
   puts the open read back at the head of the queue. The worker cannot confirm it any more:
   a `/close` on the new connection would confirm nothing (that connection holds no open
   read), and if it were bundled with `/open` it would only make the log lie. So on any
   connection error the worker forgets the pending confirm, counts the message as
   redelivered, closes the client, and the first request on the new connection is a plain
   `get Q/open/t=`. The message will be handled again by someone: delivery is at-least-once,
   and handlers must be idempotent.
4. A handler that raises: `get Q/abort` puts the message back at the head at once (closing
   the connection would too, but costs a reconnect). The server counts deliveries and moves a
   message that was opened `max_deliveries` times without a close to the dead-letter queue,
   so a poison message stops bouncing without any bookkeeping here.
5. Stop: the first SIGTERM/SIGINT (or `request_stop()`) is warm: the current message is
   finished and confirmed with `get Q/close`, then the loop exits with 0. A message that
   arrives after the stop request (the blocking get was already on the wire) is given back
   with `/abort` untouched. The second signal is cold: if a handler is running it is
   interrupted (`ColdShutdown`, a BaseException so `except Exception` in a handler cannot
   swallow it), the message is given back with `/abort`, and the loop exits with 1.
6. A dead queue server never kills the worker: it reconnects with capped exponential backoff
   (with jitter, so a pool of workers does not reconnect in lockstep), logs every failed
   attempt and the recovery, and a stop request interrupts the backoff wait.

Counters in the shutdown line: `processed` = handler returned, `failed` = handler raised,
`redelivered` = messages handed back to the queue to be delivered again (aborted after a
failure or at a stop, or held by a connection that broke before the confirm was answered).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

logger = logging.getLogger(__name__)

Handler = Callable[[bytes], object]
ClientFactory = Callable[[], Any]

EXIT_OK = 0
EXIT_COLD = 1


class ColdShutdown(BaseException):
    """Raised inside a running handler by the second stop signal."""


@dataclass(slots=True)
class WorkerCounts:
    processed: int = 0
    failed: int = 0
    redelivered: int = 0
    reconnects: int = 0


def backoff_delay_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Capped exponential delay before reconnect attempt `attempt` (1-based), without jitter."""
    return float(min(max_s, initial_s * (2 ** max(0, attempt - 1))))


class Worker:
    """Consume one queue with reliable reads and run `handler` on each message.

    Args:
        queue: queue name.
        handler: called with the message bytes; raising means failure (the message is aborted).
        wait_ms: how long one blocking `get` waits for a message.
        burst: exit (0) as soon as the queue is empty instead of waiting for more.
        max_messages: exit (0) after handling this many messages (recycling; 0 = never).
        handle_signals: install SIGTERM/SIGINT handlers in `run()`; embedders pass False and
            call `request_stop()` themselves (a cold stop then cannot interrupt a handler).
        client_factory: builds the pymemcache client (tests point it elsewhere).
    """

    def __init__(
        self,
        queue: str,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 22133,
        wait_ms: int = 1000,
        burst: bool = False,
        max_messages: int = 0,
        handle_signals: bool = True,
        connect_timeout_s: float = 2.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.host = host
        self.port = port
        self.wait_ms = wait_ms
        self.burst = burst
        self.max_messages = max_messages
        self.handle_signals = handle_signals
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.counts = WorkerCounts()
        self._client_factory = client_factory or self._default_client
        self._client: Any = None
        self._confirm_pending = False
        self._stop = False
        self._cold = False
        self._in_handler = False
        self._signals_seen = 0
        self._wake = threading.Event()
        self._failures = 0
        self._down_since = 0.0
        self._last_error: BaseException | None = None

    # -- public API ------------------------------------------------------------------------

    def request_stop(self, cold: bool = False) -> None:
        """Ask the loop to stop: warm (finish and confirm the current message) or cold."""
        if self._stop and not cold:
            cold = True
        if cold:
            self._cold = True
        self._stop = True
        self._wake.set()

    def run(self) -> int:
        """Run until stopped (or the queue is empty in burst mode); returns the exit code."""
        with self._signals():
            logger.info(
                "worker pid %d consuming queue %r at %s:%d (wait %d ms%s)",
                os.getpid(),
                self.queue,
                self.host,
                self.port,
                self.wait_ms,
                ", burst" if self.burst else "",
            )
            try:
                self._loop()
            except ColdShutdown:
                # The handler was interrupted; its message goes back to the head.
                self._give_back("cold shutdown interrupted the handler")
            self._finish()
        code = EXIT_COLD if self._cold else EXIT_OK
        c = self.counts
        logger.info(
            "worker pid %d stopped (%s): processed=%d failed=%d redelivered=%d reconnects=%d",
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
                if self.burst and self._failures == 0:
                    logger.info("queue %r is empty; burst mode ends", self.queue)
                    self._stop = True
                continue
            if self._stopping():
                # Arrived after a stop request: not started, so hand it back untouched.
                self._give_back("stop requested before the handler started")
                return
            if self._run_handler(data):
                self._confirm_pending = True
                if self.max_messages and self.counts.processed >= self.max_messages:
                    logger.info("handled %d messages; exiting to be restarted", self.max_messages)
                    self._stop = True
            else:
                self._give_back("the handler failed")

    def _stopping(self) -> bool:
        # A method, not the attribute: a signal handler may set it between two statements.
        return self._stop

    def _fetch(self) -> bytes | None:
        """One `get`; None on timeout or on a connection error (after the backoff wait)."""
        options = "close/open" if self._confirm_pending else "open"
        key = f"{self.queue}/{options}/t={self.wait_ms}"
        try:
            value = self._command(key)
        except (OSError, MemcacheError) as exc:
            self._connection_lost(exc)
            if not self._stopping():
                self._backoff()
            return None
        # The reply proves the bundled /close was applied.
        self._confirm_pending = False
        self._recovered()
        return value

    def _run_handler(self, data: bytes) -> bool:
        try:
            self._in_handler = True
            self.handler(data)
        except Exception:
            self.counts.failed += 1
            logger.exception(
                "handler failed on a message from %r (%d bytes)", self.queue, len(data)
            )
            return False
        finally:
            self._in_handler = False
        self.counts.processed += 1
        return True

    def _give_back(self, why: str) -> None:
        """Return the open message to the head of the queue (`/abort`)."""
        self.counts.redelivered += 1
        try:
            self._command(f"{self.queue}/abort")
            logger.info("gave a message back to %r: %s", self.queue, why)
        except (OSError, MemcacheError) as exc:
            # The connection is gone, and with it the open read: the server has put the
            # message back already.
            self._connection_lost(exc)

    def _finish(self) -> None:
        """Confirm what was handled (warm stop, burst end) and close the connection."""
        if self._confirm_pending:
            try:
                self._command(f"{self.queue}/close")
                self._confirm_pending = False
            except (OSError, MemcacheError) as exc:
                self._connection_lost(exc)
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- connection ------------------------------------------------------------------------

    def _default_client(self) -> Client:
        return Client(
            (self.host, self.port),
            connect_timeout=self.connect_timeout_s,
            # Longer than the blocking wait, so a slow reply is not mistaken for a dead server.
            timeout=self.wait_ms / 1000 + 5.0,
            no_delay=True,
        )

    def _command(self, key: str) -> bytes | None:
        if self._client is None:
            self._client = self._client_factory()
        value: bytes | None = self._client.get(key)
        return value

    def _connection_lost(self, exc: BaseException) -> None:
        if self._confirm_pending:
            # Rule 3: the server requeued it when the connection broke; never /close it on
            # a new connection.
            self.counts.redelivered += 1
            self._confirm_pending = False
            logger.warning(
                "connection lost before a handled message was confirmed; "
                "the queue will deliver it again"
            )
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a broken socket may fail in odd ways; it is gone anyway
                pass
            self._client = None
        self._failures += 1
        if self._failures == 1:
            self._down_since = time.monotonic()
        self._last_error = exc

    def _backoff(self) -> None:
        delay_s = backoff_delay_s(self._failures, self.backoff_initial_s, self.backoff_max_s)
        delay_s *= random.uniform(0.5, 1.0)
        logger.warning(
            "queue at %s:%d unavailable (%s: %s); reconnect attempt %d in %.2fs",
            self.host,
            self.port,
            type(self._last_error).__name__,
            self._last_error,
            self._failures,
            delay_s,
        )
        self._wake.wait(delay_s)

    def _recovered(self) -> None:
        if self._failures:
            self.counts.reconnects += 1
            logger.info(
                "reconnected to queue at %s:%d after %d failed attempts (%.1fs)",
                self.host,
                self.port,
                self._failures,
                time.monotonic() - self._down_since,
            )
            self._failures = 0

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Count first, log after: a second signal can run its handler nested inside this one
        # (Python checks for signals between bytecodes), and it must see this one counted,
        # or two quick signals would both be taken for the first.
        self._signals_seen += 1
        name = signal.Signals(signum).name
        if self._signals_seen == 1 and not self._stop:
            self.request_stop()
            logger.info("%s: warm shutdown, finishing the current message", name)
            return
        self.request_stop(cold=True)
        logger.warning("%s again: cold shutdown, giving the current message back", name)
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
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
