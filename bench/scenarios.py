"""The performance targets beyond the client matrix, one function each: group commit, a
large backlog, fairness.

Each scenario starts its own kestrelq, measures, checks what came back, and returns a
Markdown section plus the numbers, so the harness can print and save them with the table.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field, replace
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from bench import loadgen, procstat
from bench.drivers import make_payload, parse_id
from bench.report import Check
from bench.runner import percentile
from bench.servers import HOST, ServerSpec, start
from kestrelq.client import Client
from kestrelq.errors import KestrelqError
from kestrelq.protocol.client import ClientConnection, Status, Values
from kestrelq.protocol.commands import Set
from kestrelq.protocol.parser import parse_get_key

log = logging.getLogger(__name__)

MIB = 1 << 20
KESTRELQ = ServerSpec("kestrelq")


@dataclass
class Section:
    title: str
    markdown: str
    numbers: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    ok: bool = True


def server_stats(port: int, timeout_s: float = 5.0) -> dict[str, str]:
    """The server's `stats` reply as {name: value}."""
    with Client(HOST, port, timeout_s) as client:
        return client.stats()


def _fsyncs(port: int) -> int | None:
    value = server_stats(port).get("fsyncs")
    return int(value) if value is not None and value.isdigit() else None


# ---- group commit: 16 concurrent producers, fsync always vs never -------------------------


def fsync_scale(
    work_dir: Path,
    messages: int,
    producers: int = 16,
    size: int = 64,
    template: ServerSpec = KESTRELQ,
) -> Section:
    rows: dict[str, dict[str, float]] = {}
    ok = True
    for policy in ("always", "never"):
        server = start(replace(template, fsync=policy), work_dir)
        try:
            before = _fsyncs(server.port)
            # One command in flight per connection: 16 producers each waiting for STORED.
            enq = loadgen.enqueue(
                server.port, "kestrelq", messages, size, producers, 1, pid=server.pid
            )
            after = _fsyncs(server.port)
            _deq, tally = loadgen.dequeue(server.port, "kestrelq", messages, 4, 64, size=size)
            missing, corrupt, dups = tally.verify(messages)
            ok = ok and missing == 0 and corrupt == 0 and dups == 0
            fsyncs = float("nan") if before is None or after is None else float(after - before)
            rows[policy] = {
                "rate": enq.rate,
                "p50_us": enq.batch_p50_us,
                "p99_us": enq.batch_p99_us,
                "cpu_us": enq.server_cpu_us_per_msg or 0.0,
                "fsyncs": fsyncs,
                "fsyncs_per_s": fsyncs / enq.seconds if enq.seconds else 0.0,
                "missing": float(missing),
            }
        finally:
            server.stop()
    ratio = rows["always"]["rate"] / rows["never"]["rate"] if rows["never"]["rate"] else 0.0
    lines = [
        f"{producers} producers (one set in flight each), {messages} sets of {size} B.",
        "",
        "| fsync | sets/s | p50 µs | p99 µs | server CPU µs/set | fsyncs | fsyncs/s | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for policy, r in rows.items():
        lines.append(
            f"| {policy} | {r['rate']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} "
            f"| {r['cpu_us']:.1f} | {r['fsyncs']:.0f} | {r['fsyncs_per_s']:,.0f} "
            f"| {r['missing']:.0f} |"
        )
    if rows["always"]["fsyncs"] != rows["always"]["fsyncs"]:  # NaN: no `fsyncs` stat
        lines.append("\n(the server reports no `STAT fsyncs`; fsync counts unavailable)")
    lines.append(f"\nalways / never throughput: {ratio:.2f}")
    numbers = {f"{p}_{k}": v for p, r in rows.items() for k, v in r.items()}
    numbers["always_over_never"] = ratio
    return Section(
        "fsync scaling (group commit)",
        "\n".join(lines) + "\n",
        numbers,
        [Check(f"--fsync always / never with {producers} producers", ratio, 0.5)],
        ok,
    )


# ---- a large backlog: memory, restart time, journal size after draining --------------------


def _first_item(port: int, timeout_s: float) -> tuple[float, bytes | None]:
    """Poll `get bench` until an item comes back; return (seconds, item)."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        try:
            with Client(HOST, port, timeout_s) as client:
                item = client.get("bench")
            if item is not None:
                return time.monotonic() - t0, item.data
        except (OSError, KestrelqError):
            pass
        time.sleep(0.005)  # poll interval while the server replays its journal
    return time.monotonic() - t0, None


def backlog(
    work_dir: Path,
    items: int,
    *,
    size: int = 1024,
    fsync: str = "never",
    restart_signal: int = signal.SIGKILL,
    compaction_wait_s: float = 30.0,
    template: ServerSpec = KESTRELQ,
) -> Section:
    data_dir = work_dir / "backlog-data"
    spec = replace(template, fsync=fsync)
    server = start(spec, work_dir, data_dir=data_dir)
    n: dict[str, float] = {"items": float(items)}
    try:
        enq = loadgen.enqueue(server.port, "kestrelq", items, size, 4, 64, pid=server.pid)
        n["fill_rate"] = enq.rate
        n["rss_full_mb"] = procstat.rss_kb(server.pid) / 1024
        n["hwm_full_mb"] = procstat.peak_rss_kb(server.pid) / 1024
        n["disk_full_mb"] = procstat.dir_size(data_dir) / MIB
        port = server.port
    finally:
        server.stop(restart_signal)
    t0 = time.monotonic()
    server = start(spec, work_dir, port=port, data_dir=data_dir, ready_timeout_s=600)
    try:
        n["ready_s"] = time.monotonic() - t0
        first_s, first = _first_item(server.port, 600)
        n["first_item_s"] = n["ready_s"] + first_s
        n["rss_restarted_mb"] = procstat.rss_kb(server.pid) / 1024
        n["hwm_restarted_mb"] = procstat.peak_rss_kb(server.pid) / 1024
        n["disk_peak_mb"] = max(n["disk_full_mb"], procstat.dir_size(data_dir) / MIB)
        deq, tally = loadgen.dequeue(
            server.port, "kestrelq", items, 4, 64, size=size, pid=server.pid
        )
        if first is not None:
            tally.add(first)
        missing, corrupt, dups = tally.verify(items)
        n["drain_rate"] = deq.rate
        n.update(missing=missing, corrupt=corrupt, duplicates=dups)
        n["disk_drained_mb"] = procstat.dir_size(data_dir) / MIB
        # Compaction may run in the background: watch the size for a bounded time.
        deadline = time.monotonic() + compaction_wait_s
        t_drained = time.monotonic()
        size_now = n["disk_drained_mb"]
        while time.monotonic() < deadline and size_now > 0.01 * n["disk_peak_mb"]:
            time.sleep(0.2)  # sampling interval of the journal size
            size_now = procstat.dir_size(data_dir) / MIB
        n["disk_settled_mb"] = size_now
        n["settle_s"] = time.monotonic() - t_drained
        n["rss_drained_mb"] = procstat.rss_kb(server.pid) / 1024
    finally:
        server.stop()
    ok = n["missing"] == 0 and n["corrupt"] == 0 and first is not None
    ratio = n["disk_settled_mb"] / n["disk_peak_mb"] if n["disk_peak_mb"] else 0.0
    sig = signal.Signals(restart_signal).name
    pct = 100 * ratio
    md = f"""{items:,} items of {size} B, fsync={fsync}; restart by {sig}.

| measure | value |
|---|---|
| fill rate (pipelined sets) | {n["fill_rate"]:,.0f} /s |
| server RSS holding the backlog | {n["rss_full_mb"]:.1f} MB (peak {n["hwm_full_mb"]:.1f} MB) |
| data dir at peak | {n["disk_peak_mb"]:.1f} MB |
| restart: answers `version` after | {n["ready_s"]:.2f} s |
| restart: first item served after | {n["first_item_s"]:.2f} s |
| server RSS after restart | {n["rss_restarted_mb"]:.1f} MB (peak {n["hwm_restarted_mb"]:.1f} MB) |
| drain rate (pipelined gets) | {n["drain_rate"]:,.0f} /s |
| data dir right after drain | {n["disk_drained_mb"]:.2f} MB |
| data dir after {n["settle_s"]:.1f} s | {n["disk_settled_mb"]:.2f} MB ({pct:.2f}% of peak) |
| missing / corrupt / duplicated | {n["missing"]:.0f} / {n["corrupt"]:.0f} / {n["duplicates"]:.0f} |
"""
    checks = [
        Check("backlog: server RSS while holding it (MB)", n["rss_full_mb"], 100, "le"),
        Check("backlog: restart until first item served (s)", n["first_item_s"], 10, "le"),
        Check("backlog: data dir after drain / peak", ratio, 0.01, "le"),
    ]
    return Section("backlog", md, n, checks, ok)


# ---- fairness: big items on one queue, small ones on another --------------------------------


def _big_flow(port: int, size: int, stop: Event, out: mp.Queue[Any]) -> None:
    """Set and get `size`-byte items on queue `big` until told to stop; report bytes moved.

    It says "started" once connected, and always completes at least one round trip, so a
    short run still measures small items beside a big one actually in flight.
    """
    moved = 0
    body = b"B" * size
    try:
        with Client(HOST, port, timeout=120) as client:
            out.put(("started", 0))
            while True:
                client.set("big", body)
                if client.get("big") is not None:
                    moved += 2 * size
                if stop.is_set():
                    break
        out.put(("ok", moved))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


async def _small_client(
    port: int, index: int, seconds: float, rate: float, set_lat: list[float], get_lat: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    conn = ClientConnection()
    get = parse_get_key(b"small")
    sent = 0
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    t_end = loop.time() + seconds
    next_at = loop.time()
    try:
        while loop.time() < t_end:
            payload = make_payload(index * 10_000_000 + sent, 64)
            t0 = time.perf_counter_ns()
            writer.write(conn.send(Set("small", 0, 0, payload)))
            (stored,) = await loadgen.replies(reader, conn)
            set_lat.append((time.perf_counter_ns() - t0) / 1000)
            if stored is not Status.STORED:
                raise RuntimeError(f"small set: {stored}")
            t0 = time.perf_counter_ns()
            writer.write(conn.send(get))
            (got,) = await loadgen.replies(reader, conn)
            get_lat.append((time.perf_counter_ns() - t0) / 1000)
            if not isinstance(got, Values) or not got.items or len(got.items[0].data) != 64:
                raise RuntimeError(f"small get came back empty: {got}")
            parse_id(got.items[0].data)
            sent += 1
            # Paced, not flat out: the point is how long a small item waits behind big ones.
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        writer.close()
    return sent


async def _small_clients(
    port: int, clients: int, seconds: float, rate: float
) -> tuple[list[float], list[float], int]:
    set_lat: list[float] = []
    get_lat: list[float] = []
    counts = await asyncio.gather(
        *(_small_client(port, i, seconds, rate, set_lat, get_lat) for i in range(clients))
    )
    return set_lat, get_lat, sum(counts)


def fairness(
    work_dir: Path,
    *,
    seconds: float = 5.0,
    clients: int = 10,
    rate: float = 200.0,
    big_bytes: int = 8 * MIB,
    big_flows: int = 1,
    fsync: str = "never",
    template: ServerSpec = KESTRELQ,
) -> Section:
    server = start(replace(template, fsync=fsync), work_dir)
    results: dict[str, dict[str, float]] = {}
    ok = True
    try:
        for label, flows in (("alone", 0), ("with big items", big_flows)):
            ctx = mp.get_context("spawn")
            stop = ctx.Event()
            out: mp.Queue[Any] = ctx.Queue()
            procs = [
                ctx.Process(target=_big_flow, args=(server.port, big_bytes, stop, out), daemon=True)
                for _ in range(flows)
            ]
            for p in procs:
                p.start()
            started = [out.get(timeout=120) for _ in procs]
            if any(status != "started" for status, _ in started):
                raise RuntimeError(f"big flow did not start: {started}")
            set_lat, get_lat, sent = asyncio.run(
                _small_clients(server.port, clients, seconds, rate)
            )
            stop.set()
            moved = 0
            for _ in procs:
                status, value = out.get(timeout=120)
                if status != "ok":
                    ok = False
                    log.error("big flow failed: %s", value)
                else:
                    moved += value
            for p in procs:
                p.join(timeout=30)
            results[label] = {
                "small_msgs": float(sent),
                "set_p50_us": percentile(set_lat, 50),
                "set_p99_us": percentile(set_lat, 99),
                "set_max_us": max(set_lat, default=0.0),
                "get_p50_us": percentile(get_lat, 50),
                "get_p99_us": percentile(get_lat, 99),
                "big_mib_per_s": moved / MIB / seconds,
            }
    finally:
        server.stop()
    lines = [
        f"{clients} clients, each a 64 B set then get every {1000 / rate:.1f} ms for {seconds:g} s,"
        f" on queue `small`; {big_flows} flow(s) of {big_bytes // MIB} MiB set+get on queue `big`.",
        "",
        "| run | small msgs | set p50 µs | set p99 µs | set max µs | get p50 µs | get p99 µs "
        "| big MiB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['small_msgs']:.0f} | {r['set_p50_us']:.0f} | {r['set_p99_us']:.0f} "
            f"| {r['set_max_us']:.0f} | {r['get_p50_us']:.0f} | {r['get_p99_us']:.0f} "
            f"| {r['big_mib_per_s']:.1f} |"
        )
    loaded = results["with big items"]
    worst_p99_ms = max(loaded["set_p99_us"], loaded["get_p99_us"]) / 1000
    numbers = {f"{k}_{m}": v for k, r in results.items() for m, v in r.items()}
    numbers = {k.replace(" ", "_"): v for k, v in numbers.items()}
    checks = [Check("fairness: small-item p99 beside 8 MiB items (ms)", worst_p99_ms, 50, "le")]
    return Section("fairness", "\n".join(lines) + "\n", numbers, checks, ok)
