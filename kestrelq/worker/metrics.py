"""Worker metrics: what a pool of worker processes handled, for Prometheus.

Theory of operation. supervisord runs a pool of worker processes; Prometheus wants one target
per pool, whose counters do not drop when one process of it restarts. prometheus_client's
multiprocess mode gives exactly that:

1. Each worker writes its counters and its histogram to its own memory-mapped files in
   `PROMETHEUS_MULTIPROC_DIR` (one set per pid: nothing is shared or locked between
   processes, and a write is a store into a mapped page, no system call).
2. One more program of the pool, `kestrelq worker-metrics`, serves `/metrics` on port 9134
   (`KESTRELQ_WORKER_METRICS_PORT`; `kestrelq conf` renders it beside the workers). At each
   scrape it sums the files of every pid, the dead ones included: a worker restarted by
   supervisord leaves its counts behind, so the pool's `_total` keeps growing.
3. The directory is emptied when the pool starts (the container's entrypoint, `make
   host-up`), never while it runs: a previous run's files would add their counts to this
   one's, and removing a dead worker's files would make the pool's counters go backwards.
4. A worker calls `mark_process_dead()` on its way out, as the library asks (it clears the
   live gauges of that pid; a worker has none today, so a gauge added later stays right).
5. prometheus_client picks its storage when it is first imported, from the environment: the
   worker imports it only when `PROMETHEUS_MULTIPROC_DIR` is set, so without it a worker
   neither records metrics nor needs the library at all.

Rejected: a port per worker process (one Prometheus target per supervisord process number,
changing whenever the pool is resized); the Pushgateway (another service, which keeps the
counts of dead workers for ever and hides a dead pool behind its last push); workers
reporting to the exporter over a socket (a hand-written protocol where the library has one).

Names (per queue, label `queue`): kestrelq_worker_processed_total (the handler returned),
kestrelq_worker_failed_total (it raised or ran past its time limit),
kestrelq_worker_redelivered_total (messages given back to the queue to be delivered again),
kestrelq_worker_handler_duration_seconds (a histogram of every handler call, failed ones too).
"""

from __future__ import annotations

import logging
import os
import signal
from http.server import ThreadingHTTPServer
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PORT_ENV = "KESTRELQ_WORKER_METRICS_PORT"
DEFAULT_PORT = 9134
# Handlers run from milliseconds (a digest) to minutes (a thumbnail of a big photo, up to the
# default 5-minute time limit): the library's default buckets stop at 10 s.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """What the worker loop reports about its messages. This one records nothing."""

    def handled(self, elapsed_s: float, ok: bool) -> None:
        """A handler call ended: returned (`ok`) or failed, after `elapsed_s`."""

    def redelivered(self) -> None:
        """A message went back to the queue to be delivered again."""

    def close(self) -> None:
        """The process is about to exit."""


class PrometheusMetrics(Metrics):
    """One queue's worker metrics, in prometheus_client's multiprocess files (rule 1)."""

    def __init__(self, queue: str, directory: str) -> None:
        # The exporter may not have made it yet: supervisord starts the programs together.
        os.makedirs(directory, exist_ok=True)
        from prometheus_client import Counter, Histogram

        # registry=None: nothing is served from this process (rule 2), and several workers
        # in one process (tests, embedders) must not collide in the default registry.
        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, ["queue"], registry=None).labels(queue)

        self._processed = counter(
            "kestrelq_worker_processed", "Messages whose handler returned, per queue"
        )
        self._failed = counter(
            "kestrelq_worker_failed",
            "Handler calls that raised or ran past their time limit, per queue",
        )
        self._redelivered = counter(
            "kestrelq_worker_redelivered",
            "Messages given back to the queue to be delivered again, per queue",
        )
        self._duration = Histogram(
            "kestrelq_worker_handler_duration_seconds",
            "How long handler calls took, failed ones included, per queue",
            ["queue"],
            registry=None,
            buckets=DURATION_BUCKETS,
        ).labels(queue)

    def handled(self, elapsed_s: float, ok: bool) -> None:
        (self._processed if ok else self._failed).inc()
        self._duration.observe(elapsed_s)

    def redelivered(self) -> None:
        self._redelivered.inc()

    def close(self) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def metrics_from_env(queue: str) -> Metrics:
    """PrometheusMetrics when the pool's directory is set (rule 5), else no metrics."""
    directory = os.environ.get(MULTIPROC_ENV, "")
    return PrometheusMetrics(queue, directory) if directory else Metrics()


def pool_server(host: str, port: int, directory: str) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) whose every path answers the pool's summed metrics."""
    # Rule 5: the library reads the directory at its first import.
    os.environ[MULTIPROC_ENV] = directory
    os.makedirs(directory, exist_ok=True)
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import MetricsHandler
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return ThreadingHTTPServer((host, port), MetricsHandler.factory(registry))


def serve_pool(host: str, port: int, directory: str) -> int:
    """Serve the pool's /metrics until SIGTERM or SIGINT; returns the exit code."""
    server = pool_server(host, port, directory)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = server.server_address
    logger.info("the worker pool's metrics (%s) on http://%s:%d/metrics", directory, *where[:2])
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
