"""Prometheus metrics: a collector over the counters the server keeps, and its HTTP port.

Collecting costs the queues nothing: the collector reads, at scrape time, the figures `stats`
reads (`QueueState`, `QueueStats`, the connections, the journal store) plus two the journal
keeps as plain numbers where the event happens (fsync rounds, fsync durations). Nothing on a
command's path knows that metrics exist.

Why the port is served by the server's own event loop, and not by prometheus_client's
`start_http_server` thread: the collector reads dicts and deques that only the loop thread
changes. Read from another thread mid-change, a dict of queues raises "changed size during
iteration", and the figures of one scrape would not belong together. In the loop, a scrape
sees the state between two commands, as `stats` does.

What keeps a scrape from holding up the queues:
- the figures are taken a few hundred queues at a time (stats.QUEUES_PER_PART), other clients
  served in between, and turned into text in a worker thread;
- the reply is written without waiting for the scraper to read it: a scraper that reads
  slowly or not at all costs its socket buffer, and after WRITE_TIMEOUT_S its connection;
- a request must arrive whole within REQUEST_TIMEOUT_S and fit in MAX_REQUEST_BYTES, and at
  most MAX_SCRAPERS connections are served at once. A connection beyond that pushes out the
  oldest one that has not sent its whole request yet (connections that send nothing must not
  shut Prometheus out for REQUEST_TIMEOUT_S), and is closed at once if all are being answered.

A token (`metrics_token_file`) is compared in constant time; without one, the address the
port is bound to (127.0.0.1 by default) is its only protection (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from kestrelq.errors import ConfigError
from kestrelq.server.state import ServerState
from kestrelq.server.stats import QUEUES_PER_PART

logger = logging.getLogger(__name__)

PATH = "/metrics"
REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
MAX_REQUEST_BYTES = 16 << 10
MAX_SCRAPERS = 8

# Per queue (label `queue`): (name, help, what of the queue). Gauges first, then counters.
_QUEUE_GAUGES = (
    ("kestrelq_queue_items", "Items ready to be read (open reads not included)."),
    ("kestrelq_queue_bytes", "Data bytes of the items ready to be read."),
    ("kestrelq_queue_open_reads", "Reliable reads handed out and not yet closed or aborted."),
    ("kestrelq_queue_waiters", "Clients blocked in a get with a timeout on this queue."),
    (
        "kestrelq_queue_oldest_item_age_seconds",
        "How long the item at the head has waited so far (0 when none is ready).",
    ),
)
_QUEUE_COUNTERS = (
    ("kestrelq_queue_items_put_total", "Items put on the queue (sets, fanout copies, moves)."),
    ("kestrelq_queue_items_got_total", "Items handed to readers (a redelivery counts again)."),
    ("kestrelq_queue_items_expired_total", "Items that expired on this queue."),
    (
        "kestrelq_queue_items_dead_lettered_total",
        "Items moved to the dead-letter queue after max_deliveries opens without a close.",
    ),
    (
        "kestrelq_queue_items_discarded_total",
        "Items dropped to make room, or fanout copies a full queue could not take.",
    ),
)


def read_token(path: str) -> str:
    """The bearer token in `path` (surrounding whitespace dropped); ConfigError if unusable."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read metrics_token_file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"metrics_token_file {path} is empty")
    return token


class Families:
    """The metric families of one scrape, filled a part at a time."""

    def __init__(self) -> None:
        gauges = [GaugeMetricFamily(n, h, labels=["queue"]) for n, h in _QUEUE_GAUGES]
        counters = [CounterMetricFamily(n, h, labels=["queue"]) for n, h in _QUEUE_COUNTERS]
        # Each family with the name its samples carry (a counter's ends in _total).
        self.per_queue: list[tuple[Metric, str]] = [
            *((g, g.name) for g in gauges),
            *((c, f"{c.name}_total") for c in counters),
        ]
        self.server: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from (family for family, _ in self.per_queue)
        yield from self.server


class ServerCollector:
    """A prometheus_client collector of the server's figures (see the module)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        families = Families()
        for _ in self.fill(families):
            pass
        return families.collect()

    def fill(self, families: Families) -> Iterator[None]:
        """Add the figures to `families`, yielding between parts of QUEUES_PER_PART queues."""
        state = self.state
        queues = state.collection.queues
        names = sorted(queues)
        for start in range(0, len(names), QUEUES_PER_PART):
            now_ms = state.now_ms()
            for name in names[start : start + QUEUES_PER_PART]:
                queue = queues.get(name)
                if queue is None:
                    continue  # deleted since the last part
                s = queue.stats
                waiting = state.waiters.count(name)
                age_s = queue.oldest_age_ms(now_ms) / 1000
                values = (queue.items, queue.bytes, len(queue.open_reads), waiting, age_s,
                          s.total_items, s.got_items, s.expired_items, s.dead_lettered,
                          s.discarded)  # fmt: skip
                # Samples appended as add_metric would make them, without its checks per call:
                # half the event loop's share of a scrape.
                labels = {"queue": name}
                for (family, sample_name), value in zip(families.per_queue, values, strict=True):
                    family.samples.append(Sample(sample_name, labels, value))
            yield
        families.server = list(self._server_families())

    def _server_families(self) -> Iterator[Metric]:
        state = self.state
        store = state.store
        yield GaugeMetricFamily(
            "kestrelq_connections", "Client connections open now.", len(state.connections)
        )
        yield GaugeMetricFamily(
            "kestrelq_journal_bytes",
            "Bytes of every queue's journal segments.",
            sum(j.total_size for j in store.journals.values()),
        )
        yield CounterMetricFamily(
            "kestrelq_fsyncs_total", "Rounds of journal fsyncs (group commits).", store.fsyncs
        )
        durations = store.ledger.fsync_durations
        counts, total_s = durations.snapshot()
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*durations.bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        histogram = HistogramMetricFamily(
            "kestrelq_fsync_duration_seconds",
            "Duration of each fsync or fdatasync of a journal file or the data directory.",
        )
        histogram.add_metric([], buckets, total_s)
        yield histogram
        yield GaugeMetricFamily(
            "kestrelq_uptime_seconds",
            "Seconds since the server started.",
            max(0.0, state.clock() - state.started_s),
        )


class _Fixed:
    """Families already filled, for generate_latest in a worker thread."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class MetricsEndpoint:
    """`GET /metrics` on its own port, in the server's event loop (see the module)."""

    def __init__(self, state: ServerState, token_file: str = "") -> None:
        self.collector = ServerCollector(state)
        self.token_file = token_file
        self._token = read_token(token_file) if token_file else ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # The connections still waiting for their request head, oldest first.
        self._unheard: dict[asyncio.StreamWriter, None] = {}

    def reload(self) -> None:
        """Re-read the token file (`reload`, SIGHUP); ConfigError keeps the old token."""
        if self.token_file:
            self._token = read_token(self.token_file)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_REQUEST_BYTES, reuse_address=True
        )

    @property
    def sockets(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self._server.sockets] if self._server else []

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_SCRAPERS:
            if not self._unheard:
                writer.close()
                return
            oldest = next(iter(self._unheard))
            # Its slot is free now, not when its task sees the close.
            self._writers.discard(oldest)
            del self._unheard[oldest]
            oldest.close()
        self._writers.add(writer)
        self._unheard[writer] = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            finally:
                self._unheard.pop(writer, None)
            if writer not in self._writers:
                # Pushed out while its head was arriving (the read had completed, the task
                # not yet resumed): answering it would run a scrape outside MAX_SCRAPERS.
                return
            status, headers, body = await self._answer(head)
            headers.append(("Content-Length", str(len(body))))
            if head.startswith(b"HEAD "):
                body = b""
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
            writer.write(("\r\n".join([*lines, "Connection: close", "", ""])).encode() + body)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        """(status line, headers, body) for a request head."""
        text = head.decode("latin-1")
        request, *header_lines = text.split("\r\n")
        parts = request.split(" ")
        plain = [("Content-Type", "text/plain; charset=utf-8")]
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", plain, b"bad request\n"
        method, target, _version = parts
        if target.split("?", 1)[0] != PATH:
            return "404 Not Found", plain, f"not found: metrics are at {PATH}\n".encode()
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [*plain, ("Allow", "GET, HEAD")], b"GET only\n"
        if self._token and not self._authorized(header_lines):
            challenge = ("WWW-Authenticate", 'Bearer realm="kestrelq metrics"')
            return "401 Unauthorized", [*plain, challenge], b"a bearer token is needed\n"
        families = Families()
        for _ in self.collector.fill(families):
            await asyncio.sleep(0)  # let the queues' clients in between parts
        fixed = _Fixed(families.collect())
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, fixed)
        return "200 OK", [("Content-Type", CONTENT_TYPE_LATEST)], body

    def _authorized(self, header_lines: list[str]) -> bool:
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "authorization":
                scheme, _, token = value.strip().partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(token.strip().encode(), self._token.encode())
        return False
