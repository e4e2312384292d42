"""The queue server: start-up (recover journals, bind), background ticks, shutdown.

Shutdown runs in a fixed order, as uvicorn's does: stop accepting; answer parked reads and let
each connection write what it owes; wait for connections to close (bounded); return their open
reads to the queues; fsync and close the journals.

What connections share with the server lives in one `ServerState` (server/state.py); this
module creates connections and asks them only what `state.Connection` declares. Replies held
for an fsync wait in the journal's ledger (`when_durable`); the server only runs the group
fsync once per turn of the event loop when someone waits (`_group_sync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kestrelq import __version__, hotpath
from kestrelq.errors import InvalidQueueName, JournalError, JournalWriteFailed, KestrelqError
from kestrelq.journal.item import Item
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.journal.store import JournalStore, StoreLimits
from kestrelq.protocol.commands import ServerStatus
from kestrelq.queue import names
from kestrelq.queue.collection import QueueCollection
from kestrelq.server import config as config_mod
from kestrelq.server import counters, status
from kestrelq.server.budget import ByteBudget
from kestrelq.server.config import ServerConfig
from kestrelq.server.connection import QueueProtocol
from kestrelq.server.security import Security
from kestrelq.server.state import ServerState, Waiters

if TYPE_CHECKING:
    from kestrelq.server.metrics import MetricsEndpoint

logger = logging.getLogger(__name__)

TICK_S = 0.25
# Exit status after a failed batched journal write (EX_IOERR from sysexits.h).
EXIT_JOURNAL_LOST = 74


# Descriptors kept for what is neither a connection nor a journal: listeners, the event loop,
# the lock and directory files, logs, TLS reloads.
_SPARE_DESCRIPTORS = 64


# The log line's word on each status: an operator reading the log sees what the server takes.
_STATUS_MEANS = {
    ServerStatus.UP: "taking reads and writes",
    ServerStatus.READONLY: "refusing writes, serving reads (draining)",
    ServerStatus.QUIESCENT: "refusing reads and writes",
}


# How much of a poison message the log shows, escaped: enough to recognise it (a task's id).
_DEAD_LETTER_PREVIEW_BYTES = 120


def journal_files_budget(max_connections: int) -> int:
    """How many journal files may be open at once: what the descriptor limit leaves once every
    allowed connection has one, so that a flood of queues never makes accept() fail."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    budget = soft - max_connections - _SPARE_DESCRIPTORS
    if budget < 16:
        logger.warning(
            "the descriptor limit (%d) barely covers max_connections (%d): raise `ulimit -n`"
            " or lower max_connections, or connections may be refused when many queues are"
            " written at once", soft, max_connections)  # fmt: skip
    return max(16, budget)


class Server:
    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        # First: a bad auth file or certificate stops the start before the journals are opened.
        self.security = Security(config)
        self.store = JournalStore(
            config.data_dir,
            config.queue_fsync,
            StoreLimits(
                max_record_bytes=config.max_item_bytes + 64,
                reserve_bytes=config.disk_reserve_bytes,
                segment_bytes=config.segment_bytes,
                max_open_files=journal_files_budget(config.max_connections),
            ),
            salvage=config.salvage,
            batch_writes=config.batch_writes,
            on_write_lost=self._write_lost,
            on_segment_full=self._segment_full,
        )
        # How the server ends when the journal falls behind memory; a seam for tests.
        self.exit: Callable[[int], None] = os._exit
        waiters = Waiters()
        self.collection = QueueCollection(
            self.store,
            config.queue_defaults,
            dict(config.queues),
            notify=waiters.notify,
            max_queues=config.max_queues,
            on_dead_letter=self._dead_lettered,
        )
        self.state = ServerState(
            config=config,
            collection=self.collection,
            store=self.store,
            security=self.security,
            waiters=waiters,
            clock=clock,
            request_shutdown=self.request_shutdown,
            reload=self.reload,
            sync_soon=self._sync_soon,
            sync_now=self._group_sync,
            set_status=self.set_status,
            started_s=clock(),
            pending=ByteBudget(config.max_pending_bytes),
        )
        # Read here, as the auth file is: a bad token file stops the start early.
        self.metrics: MetricsEndpoint | None = None
        if config.metrics_port:
            # Imported only when asked for: prometheus_client took 90-150 ms and 1 MB of every
            # start, a server with metrics off (the default) included.
            from kestrelq.server.metrics import MetricsEndpoint

            self.metrics = MetricsEndpoint(self.state, config.metrics_token_file)
        self.failed = False
        # What the last save of the queue counters saw (see _save_counters).
        self._counters_mark: tuple[int, ...] = ()
        self._counters_saved_s = 0.0
        self._counters_unsaved = False
        self._counters_saving: asyncio.Future[None] | None = None
        self._timed_out_reads = 0
        self._full_segments: set[str] = set()
        self._sync_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._stop = asyncio.Event()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- start-up ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Open the data directory and rebuild every queue from its journal."""
        started = time.monotonic()
        store = self.store
        store.open()
        items = 0
        for name in store.existing_names():
            try:
                names.validate(name)
            except InvalidQueueName:
                logger.warning("ignoring journal with an invalid queue name: %r", name)
                continue
            state = self.collection.queue(name, check=False)
            for record in store.recover(name):
                state.apply(record)
            if state.behind_items:
                store.journal(name).verify_behind()
            # Reads that were open when the server stopped go back to the head.
            for xid in state.reopened_xids():
                state.unremove(xid)
            items += state.items
        counters.restore(self.collection, counters.load(Path(self.config.data_dir)))
        saved = self.state.status = status.load(store.data_dir)
        if saved is not ServerStatus.UP:
            logger.warning("server status %s (saved in %s): %s", saved.value,
                           store.data_dir / status.FILE_NAME, _STATUS_MEANS[saved])  # fmt: skip
        for name in list(store.needs_rotation):
            self._rotate(name, force=True)
        store.needs_rotation.clear()
        store.sync_all()
        logger.info(
            "recovered %d queues, %d items from %s in %.2f s",
            len(self.collection.queues), items, self.config.data_dir,
            time.monotonic() - started,
        )  # fmt: skip

    async def start(self) -> None:
        self.recover()
        loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.plain:
            self._server = await loop.create_server(
                lambda: QueueProtocol(self.state),
                cfg.host,
                cfg.port,
                reuse_address=True,
                backlog=1024,
            )
        if self.security.ssl_context is not None:
            # A client that never finishes its handshake is dropped after the timeout; until
            # it finishes, it has no QueueProtocol and costs only its socket.
            self._tls_server = await loop.create_server(
                lambda: QueueProtocol(self.state), cfg.host, cfg.tls_port, reuse_address=True,
                backlog=1024, ssl=self.security.ssl_context,
                ssl_handshake_timeout=cfg.tls_handshake_timeout_s,
            )  # fmt: skip
        for listener in self._listeners():
            _keepalive(listener, cfg.tcp_keepalive_s)
        if self.metrics is not None:
            await self.metrics.start(cfg.metrics_host, cfg.metrics_port)
            urls = [f"http://{host}:{port}/metrics" for host, port in self.metrics.sockets]
            logger.info("metrics on %s", ", ".join(urls))
        self._spawn(self._tick())
        if any(p.mode == "periodic" for p in self._policies()):
            self._spawn(self._periodic_sync())
        sockets = ", ".join(
            f"{s.getsockname()[:2]}{' tls' if srv is self._tls_server else ''}"
            for srv in self._listeners()
            for s in srv.sockets
        )
        logger.info(
            "kestrelq %s listening on %s (pid %d, fsync %s%s)",
            __version__, sockets, os.getpid(), self.config.fsync,
            ", sync_reads" if self.config.sync_reads else "",
        )  # fmt: skip

    def _listeners(self) -> list[asyncio.Server]:
        return [s for s in (self._server, self._tls_server) if s is not None]

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def serve(self, handle_signals: bool = True) -> int:
        """Run until shutdown is requested; returns the process exit code."""
        await self.start()
        with self._signals(handle_signals):
            await self._stop.wait()
        await self.shutdown()
        return 1 if self.failed else 0

    @contextlib.contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in sigs[:2]:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.state.shutting_down:
            logger.warning("second %s: exiting now", sig.name)
            os._exit(1)
        self.request_shutdown(sig.name)

    def _on_hangup(self) -> None:
        try:
            self.reload()
        except KestrelqError as exc:
            logger.error("SIGHUP: reload failed: %s", exc)

    def request_shutdown(self, why: str) -> None:
        if not self._stop.is_set():
            logger.info("shutting down (%s)", why)
            self._stop.set()

    async def shutdown(self) -> None:
        state = self.state
        state.shutting_down = True
        for listener in self._listeners():
            listener.close()
        if self.metrics is not None:
            await self.metrics.stop()
        for conn in list(state.connections):
            conn.shutdown()
        if state.connections:
            state.all_closed.clear()
            try:
                await asyncio.wait_for(state.all_closed.wait(), self.config.shutdown_timeout_s)
            except TimeoutError:
                logger.warning("%d connections did not close in time", len(state.connections))
        for conn in list(state.connections):
            conn.close_now()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for listener in self._listeners():
            await listener.wait_closed()
        # Leave each journal as short as it can be: drop segments nothing needs any more.
        for name in list(self.collection.queues):
            try:
                self._rotate(name)
            except Exception:
                logger.exception("could not start a new segment for %s at shutdown", name)
        if self._counters_saving is not None:
            await asyncio.wait([self._counters_saving])
        mark = self._counters_now()
        try:
            counters.save(Path(self.config.data_dir), counters.snapshot(self.collection))
        except OSError as exc:
            self._counters_failed(exc)
        else:
            self._counters_done(mark, time.monotonic())
        items, _ = self.collection.totals()
        self.store.close()
        logger.info("stopped (pid %d): %d items in %d queues journalled", os.getpid(), items,
                    len(self.collection.queues))  # fmt: skip

    # -- durability ------------------------------------------------------------------------

    def _write_lost(self, exc: JournalError) -> None:
        # Commands changed memory and their batched records are not on disk: carrying on
        # would serve (and checkpoint) a state the journal does not have, and a graceful stop
        # would reply to them. Leave without a word; the supervisor restarts the server
        # from the journal, and the clients retry what was never acknowledged.
        logger.critical("journal write failed after its commands were applied (%s); "
                        "exiting without replying, to restart from the journal", exc)  # fmt: skip
        self._abandon()

    def _fsync_failed(self, exc: BaseException) -> None:
        # fsyncgate: after a failed fsync the page cache's state is unknown, and a retry that
        # "succeeds" proves nothing, so nothing written before it may be acknowledged, ever
        # (the ledger sees to that). Stopping gracefully would still reply and checkpoint
        # memory: leave as a lost write does, and restart from what is on disk.
        logger.critical("fsync failed (%s); exiting without replying, to restart from the "
                        "journal", exc)  # fmt: skip
        self._abandon()

    def _abandon(self) -> None:
        for conn in list(self.state.connections):
            conn.abort()
        self.failed = True
        self.exit(EXIT_JOURNAL_LOST)

    def _sync_soon(self) -> None:
        """Run a group fsync once the event loop has handled every connection with input.

        Connections hold their replies in the ledger (`when_durable`) until an fsync covers
        their writes. The fsync runs in this thread after the current turn (call_soon), so one
        fsync covers every command of the turn, and whatever arrives while it runs joins the
        next one: redis' `appendfsync always` does the same. Measured
        against an fsync in a worker thread, this moved 1.4-1.9x as many messages with half
        the CPU: on 2 cores, waking the worker cost as much as the fsync itself.
        """
        if not self._sync_scheduled:
            self._sync_scheduled = True
            asyncio.get_running_loop().call_soon(self._group_sync)

    def _group_sync(self) -> None:
        self._sync_scheduled = False
        store = self.store
        try:
            store.sync_always()
        except OSError as exc:
            self._fsync_failed(exc)

    def _policies(self) -> list[FsyncPolicy]:
        cfg = self.config
        queue_cfgs = [cfg.queue_defaults, *cfg.queues.values()]
        return [cfg.fsync] + [q.fsync for q in queue_cfgs if q.fsync is not None]

    async def _periodic_sync(self) -> None:
        periods = [p.period_ms for p in self._policies() if p.mode == "periodic"]
        period_s = min(periods) / 1000
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period_s)
            try:
                fds, _ = self.store.take_dirty(periodic=True)
                if fds:
                    await loop.run_in_executor(None, self.store.fsync_fds, fds)
            except OSError as exc:
                self._fsync_failed(exc)

    # -- housekeeping ----------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.housekeeping()
            except Exception:
                # This loop must outlive any one failure (a full disk during a segment switch,
                # say): it is what expires items and bounds the journal.
                logger.exception("housekeeping failed; retrying at the next tick")

    def housekeeping(self) -> None:
        """Expire head items, time out stale open reads and connections, compact, re-arm the
        disk reserve."""
        self.time_out_connections()
        now_ms = self.now_ms()
        coll = self.collection
        coll.flush_all_expired(now_ms)
        self._timed_out_reads += coll.time_out_reads(now_ms)
        for name in list(coll.queues):
            self._rotate(name)
        self._save_counters()
        if self.store.unwritten:
            # Records logged outside a connection's reply (expiry, timed-out reads), and a
            # bound on how long any record stays unwritten.
            self.store.write_pending()
        if self.store.ledger.unsynced:
            # Reads answered before their fsync, with no write since to take them along in its
            # group commit: a bound (one tick) on how long an answered read stays unsynced.
            self._group_sync()
        if self.store.reserve_released:
            self.store.ensure_reserve()
        self.store.tick()  # close idle journal files, give back the room reserved ahead

    def _save_counters(self) -> None:
        """Save the queue counters (server/counters.py) when something may have changed one,
        the last save is SAVE_EVERY_S old and none is under way. Every change comes from a
        client's command (bytes read), its disconnect (open reads returned) or the
        housekeeping (expiry, timed-out reads): no walk over the queues to find out."""
        mark = self._counters_now()
        now = time.monotonic()
        if (
            mark == self._counters_mark
            or now - self._counters_saved_s < counters.SAVE_EVERY_S
            or self._counters_saving is not None
        ):
            return
        saving = asyncio.get_running_loop().run_in_executor(
            None, counters.save, Path(self.config.data_dir), counters.snapshot(self.collection)
        )
        self._counters_saving = saving

        def saved(future: asyncio.Future[None]) -> None:
            self._counters_saving = None
            if future.cancelled():  # the loop closing under it
                return
            exc = future.exception()
            if isinstance(exc, OSError):
                self._counters_failed(exc)
            elif exc is not None:
                logger.error("cannot save the queue counters", exc_info=exc)
            else:
                self._counters_done(mark, now)

        saving.add_done_callback(saved)

    def _counters_now(self) -> tuple[int, ...]:
        return (
            self.state.counters.bytes_read,
            self.state.counters.total_connections,
            len(self.state.connections),
            self.collection.counters.queue_expires,
            self._timed_out_reads,
            self.collection.counters.queue_creates,
            self.collection.counters.queue_deletes,
        )

    def _counters_failed(self, exc: OSError) -> None:
        if not self._counters_unsaved:
            logger.warning("cannot save the queue counters (kept in memory): %s", exc)
        self._counters_unsaved = True

    def _counters_done(self, mark: tuple[int, ...], started_s: float) -> None:
        if self._counters_unsaved:
            logger.info("queue counters saved again")
        self._counters_unsaved = False
        self._counters_mark, self._counters_saved_s = mark, started_s

    def time_out_connections(self) -> None:
        """Close connections that tripped read_timeout_s or idle_timeout_s (one pass a tick:
        nothing on the per-command path, and a timeout is late by at most TICK_S)."""
        now = asyncio.get_running_loop().time()
        for conn in list(self.state.connections):
            why = conn.check_timeouts(now)
            if why is not None:
                self.state.counters.timed_out_connections += 1
                logger.info("closing a connection: %s", why)
                conn.abort()

    def _dead_lettered(self, source: str, target: str, item: Item) -> None:
        limit = self.collection.config_for(source).max_deliveries
        where = f"moved to {target!r}" if target != source else "dropped (no dead-letter queue)"
        preview = bytes(item.data[:_DEAD_LETTER_PREVIEW_BYTES])
        logger.warning(
            "poison message on %r %s after %d deliveries without a close: %d bytes, %r%s",
            source, where, limit, len(item.data), preview,
            "..." if len(item.data) > len(preview) else "",
        )  # fmt: skip

    def _segment_full(self, name: str) -> None:
        if not self._full_segments:
            asyncio.get_running_loop().call_soon(self._rotate_full)
        self._full_segments.add(name)

    def _rotate_full(self) -> None:
        names, self._full_segments = self._full_segments, set()
        for name in names:
            try:
                self._rotate(name)
            except Exception:
                logger.exception("could not start a new segment for %s", name)

    def _rotate(self, name: str, force: bool = False) -> None:
        """Start a new journal segment when the old ones hold mostly dead records."""
        state = self.collection.existing(name)
        journal = self.store.journals.get(name)
        if state is None or journal is None:
            return
        empty = not state.items and not state.open_reads
        behind = bool(state.behind_items)
        if force or journal.should_rotate(empty, behind):
            try:
                journal.rotate(state.snapshot(), behind)
            finally:
                if self.store.ledger.failed is not None:
                    self._fsync_failed(self.store.ledger.failed)

    def reload(self) -> None:
        """Re-read the config file, the auth file and the TLS certificates (`reload`, SIGHUP).

        Queue settings, users and certificates change; listeners and limits do not.
        """
        try:
            self._reload_queues()
        finally:
            try:
                self.security.reload()
            finally:
                if self.metrics is not None:
                    self.metrics.reload()

    def set_status(self, new: ServerStatus) -> None:
        """`status <new>`: saved first, so a restart keeps it; OSError if it cannot be."""
        old = self.state.status
        try:
            status.save(self.store.data_dir, new)
        except OSError as exc:
            raise JournalWriteFailed(f"status {new.value} not saved (still {old.value}): "
                                     f"{exc}") from None  # fmt: skip
        self.state.status = new
        if new is not old:
            logger.warning("server status %s (was %s): %s", new.value, old.value,
                           _STATUS_MEANS[new])  # fmt: skip

    def _reload_queues(self) -> None:
        if not self.config.config_file:
            return
        fresh = config_mod.load({"config_file": self.config.config_file})
        self.config = self.config.__class__(
            **{
                **{f: getattr(self.config, f) for f in self.config.__dataclass_fields__},
                "queue_defaults": fresh.queue_defaults,
                "queues": fresh.queues,
            }
        )
        self.state.config = self.config
        self.collection.reconfigure(fresh.queue_defaults, dict(fresh.queues))
        self.store.set_policies()
        logger.info("reloaded queue settings from %s", self.config.config_file)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def run(config: ServerConfig) -> int:
    """Run a server in this process until SIGTERM/SIGINT or `shutdown`."""
    server = Server(config)
    logger.info("%s", hotpath.describe())
    try:
        import uvloop
    except ImportError:
        logger.info("uvloop not installed: using asyncio's own event loop")
    else:
        # uvloop cuts the event loop's cost per message; it is optional. The policy works
        # with every uvloop release (Debian bookworm has 0.17, without uvloop.run).
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(server.serve())


# Unanswered probes before the kernel drops a silent peer's connection.
_KEEPALIVE_PROBES = 3


def _keepalive(listener: asyncio.Server, keepalive_s: float) -> None:
    """TCP keepalive on a listener's sockets, which every accepted connection inherits (Linux).

    A client whose machine died (power, a killed swarm node) sends nothing more, not even a
    RST, so the server would hold its connection, and the reads it had open, until
    open_timeout_ms. Probed after `keepalive_s` of silence, then every keepalive_s / 3, the
    connection is closed after about twice `keepalive_s` and its open reads go back.
    Probes only run while nothing is in flight: a reply sent to a dead peer (the item a blocked
    get was waiting for) is retransmitted instead, for some 15 minutes by the kernel's default.
    TCP_USER_TIMEOUT bounds that too: data unacknowledged for twice `keepalive_s` ends the
    connection, and its open read, the one that reply made, goes back.
    """
    if keepalive_s <= 0:
        return
    idle_s = max(1, round(keepalive_s))
    for sock in listener.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's timing applies
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle_s // 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_PROBES)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 2 * idle_s * 1000)
