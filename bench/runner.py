"""One measured run: C client processes enqueue N messages, then dequeue them all.

The parent starts the server and the clients; messages on one queue and two events split the
run into phases so that the server's CPU can be read between them:

    clients connect, report "ready" -> parent reads CPU, sets `go_put` -> clients enqueue,
    report "put" -> parent reads CPU, sets `go_take` -> clients dequeue, report "done"
    -> parent reads CPU

The parent waits for each report with a deadline and notices a client that died, so a broken
run fails with the client's error instead of hanging. Each client records its own start and
end on the monotonic clock (shared by all processes on Linux) and the latency of every
operation; the parent turns them into rates and percentiles and checks that every message id
came back exactly once with its content intact.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_mod
import time
from array import array
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from bench import procstat
from bench.drivers import connect, make_payload, parse_id
from bench.servers import ServerSpec, start

log = logging.getLogger(__name__)

PHASE_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class RunConfig:
    kind: str
    mode: str
    clients: int
    messages: int
    size: int
    # pymemcache, or the minimal client (bench/miniclient.py) for every memcache server.
    client: str = "pymemcache"


@dataclass
class PhaseResult:
    messages: int
    seconds: float
    latencies_us: list[float]
    server_cpu_ns: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_msg(self) -> float:
        return self.server_cpu_ns / 1000.0 / self.messages if self.messages else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_us, q)


@dataclass
class RunResult:
    config: RunConfig
    server_label: str
    enqueue: PhaseResult
    dequeue: PhaseResult
    peak_rss_kb: int
    returned: int
    missing: int
    duplicates: int
    corrupt: int

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.corrupt == 0 and self.duplicates == 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[min(len(ordered), int(rank)) - 1]


def share(messages: int, clients: int, index: int) -> range:
    """Message ids client `index` of `clients` enqueues (and, for memcached, reads back)."""
    return range(index, messages, clients)


def _client_main(
    cfg: RunConfig,
    index: int,
    port: int,
    events: tuple[Event, Event],
    reports: mp.Queue[Any],
) -> None:
    # Every outcome is reported, an exception included, so the parent can name the failing
    # client instead of waiting for a timeout.
    try:
        put_lat = array("q")
        take_lat = array("q")
        got = array("q")
        corrupt = 0
        driver = connect(cfg.kind, cfg.mode, port, cfg.client)
        ids = share(cfg.messages, cfg.clients, index)
        payloads = [make_payload(i, cfg.size) for i in ids]
        clock = time.perf_counter_ns
        reports.put(("ready", index, None))
        if not events[0].wait(PHASE_TIMEOUT_S):
            return
        start_a = clock()
        for msg_id, payload in zip(ids, payloads, strict=True):
            t0 = clock()
            driver.put(msg_id, payload)
            put_lat.append(clock() - t0)
        end_a = clock()
        reports.put(("put", index, None))
        if not events[1].wait(PHASE_TIMEOUT_S):
            return
        start_b = clock()
        # Queues: take until empty (the enqueue phase is over, so empty means drained).
        # memcached: read back this client's own keys.
        keyed = cfg.kind == "memcached"
        todo = iter(ids) if keyed else None
        while True:
            msg_id = -1
            if todo is not None:
                msg_id = next(todo, -1)
                if msg_id < 0:
                    break
            t0 = clock()
            data = driver.take(msg_id)
            t1 = clock()
            if data is None:
                if keyed:
                    corrupt += 1
                    continue
                break
            take_lat.append(t1 - t0)
            try:
                got_id = parse_id(data)
            except ValueError:
                corrupt += 1
                continue
            if data != make_payload(got_id, cfg.size):
                corrupt += 1
            got.append(got_id)
        end_b = clock()
        driver.close()
        report = (
            (start_a, end_a, start_b, end_b),
            put_lat.tobytes(),
            take_lat.tobytes(),
            got.tobytes(),
            corrupt,
        )
        reports.put(("done", index, report))
    except BaseException as exc:
        reports.put(("error", index, f"{type(exc).__name__}: {exc}"))


def _collect(
    reports: mp.Queue[Any], kind: str, procs: list[BaseProcess], timeout_s: float
) -> list[Any]:
    """Wait for one `kind` report from every client; raise on an error or a dead client."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < len(procs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"clients did not report {kind!r} within {timeout_s:.0f} s")
        try:
            what, index, body = reports.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode is not None and i not in got]
            if dead:
                raise RuntimeError(f"client(s) {dead} exited before reporting {kind!r}") from None
            continue
        if what == "error":
            raise RuntimeError(f"client {index}: {body}")
        if what != kind:
            raise RuntimeError(f"client {index} reported {what!r}, expected {kind!r}")
        got[index] = body
    return [got[i] for i in range(len(procs))]


def _as_us(raw: bytes) -> list[float]:
    a = array("q")
    a.frombytes(raw)
    return [v / 1000.0 for v in a]


def run_once(cfg: RunConfig, spec: ServerSpec, work_dir: Path) -> RunResult:
    """Start a fresh server, run the clients against it, stop it, and return the measurements."""
    server = start(spec, work_dir)
    try:
        return _drive(cfg, server.port, server.pid, spec.label)
    finally:
        server.stop()


def _drive(cfg: RunConfig, port: int, pid: int, label: str) -> RunResult:
    ctx = mp.get_context("spawn")
    events = (ctx.Event(), ctx.Event())
    reports: mp.Queue[Any] = ctx.Queue()
    procs: list[BaseProcess] = [
        ctx.Process(target=_client_main, args=(cfg, i, port, events, reports), daemon=True)
        for i in range(cfg.clients)
    ]
    for p in procs:
        p.start()
    try:
        _collect(reports, "ready", procs, 120.0)
        cpu0 = procstat.cpu_ns(pid)
        events[0].set()
        _collect(reports, "put", procs, PHASE_TIMEOUT_S)
        cpu1 = procstat.cpu_ns(pid)
        events[1].set()
        rows = _collect(reports, "done", procs, PHASE_TIMEOUT_S)
        cpu2 = procstat.cpu_ns(pid)
        peak = procstat.peak_rss_kb(pid)
    except RuntimeError as exc:
        raise RuntimeError(f"{label} {cfg.mode} C={cfg.clients}: {exc}") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return _summarise(cfg, label, rows, (cpu0, cpu1, cpu2), peak)


def _summarise(
    cfg: RunConfig, label: str, rows: list[Any], cpu: tuple[int, int, int], peak_kb: int
) -> RunResult:
    times = [r[0] for r in rows]
    enq_s = (max(t[1] for t in times) - min(t[0] for t in times)) / 1e9
    deq_s = (max(t[3] for t in times) - min(t[2] for t in times)) / 1e9
    put_lat: list[float] = []
    take_lat: list[float] = []
    got = array("q")
    corrupt = 0
    for r in rows:
        put_lat += _as_us(r[1])
        take_lat += _as_us(r[2])
        got.frombytes(r[3])
        corrupt += r[4]
    seen: set[int] = set()
    duplicates = 0
    for msg_id in got:
        if msg_id in seen:
            duplicates += 1
        seen.add(msg_id)
    missing = sum(1 for i in range(cfg.messages) if i not in seen)
    # An id outside 0..N-1 cannot come from this run: count it as corrupt, not as returned.
    corrupt += sum(1 for i in seen if not 0 <= i < cfg.messages)
    return RunResult(
        config=cfg,
        server_label=label,
        enqueue=PhaseResult(cfg.messages, enq_s, put_lat, cpu[1] - cpu[0]),
        dequeue=PhaseResult(len(got), deq_s, take_lat, cpu[2] - cpu[1]),
        peak_rss_kb=peak_kb,
        returned=len(got),
        missing=missing,
        duplicates=duplicates,
        corrupt=corrupt,
    )
