"""A pipelined asyncio load generator over the raw memcache text protocol.

pymemcache spends tens of microseconds of Python per call, so one client process cannot show
what the server itself can do. Here M connections each keep K commands in flight: the K
commands go out in one write and their K replies are read back before the next batch. The
client's cost per message drops roughly K-fold, and the server's CPU per message (read from
/proc by the caller) becomes the number to compare with memcached's.

    python -m bench.loadgen --port 22133 --kind kestrelq --messages 100000 --depth 32

Latencies here are per batch (the round trip of K pipelined commands), not per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from bench import procstat
from bench.drivers import QUEUE, make_payload, parse_id
from bench.runner import percentile
from bench.servers import HOST
from kestrelq.protocol.client import ClientConnection, Reply, Status, Values
from kestrelq.protocol.commands import Set
from kestrelq.protocol.parser import parse_get_key

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoadgenError(RuntimeError):
    pass


@dataclass
class LoadPhase:
    messages: int
    seconds: float
    batch_p50_us: float
    batch_p99_us: float
    server_cpu_us_per_msg: float | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoadResult:
    kind: str
    mode: str
    connections: int
    depth: int
    size: int
    enqueue: LoadPhase
    dequeue: LoadPhase
    returned: int
    missing: int
    corrupt: int
    duplicates: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.corrupt == 0 and self.duplicates == 0


@dataclass
class Tally:
    """What came back, checked as it arrives: ids in arrival order, count of bad bodies.

    Keeping ids rather than bodies lets a drain of a million 1 KB items verify itself in a
    few megabytes instead of a gigabyte.
    """

    size: int
    ids: array[int] = field(default_factory=lambda: array("q"))
    corrupt: int = 0

    def add(self, value: bytes) -> None:
        try:
            i = parse_id(value)
        except ValueError:
            self.corrupt += 1
            return
        if value != make_payload(i, self.size):
            self.corrupt += 1
            return
        self.ids.append(i)

    @property
    def returned(self) -> int:
        return len(self.ids) + self.corrupt

    def verify(self, messages: int) -> tuple[int, int, int]:
        """(missing, corrupt, duplicates) against ids 0..messages-1."""
        seen: set[int] = set()
        corrupt = self.corrupt
        duplicates = 0
        for i in self.ids:
            if not 0 <= i < messages:
                corrupt += 1
                continue
            if i in seen:
                duplicates += 1
            seen.add(i)
        return messages - len(seen), corrupt, duplicates


def _batches(ids: range, depth: int) -> list[range]:
    return [ids[i : i + depth] for i in range(0, len(ids), depth)]


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, limit=1 << 24)


async def replies(reader: asyncio.StreamReader, conn: ClientConnection) -> list[Reply]:
    """Every reply `conn` still expects, read as they come (the client half frames them)."""
    out: list[Reply] = []
    while conn.pending:
        reply = conn.next_event()
        if reply is None:
            data = await reader.read(1 << 18)
            if not data:
                raise LoadgenError(f"connection closed with {conn.pending} replies unread")
            conn.receive_data(data)
        else:
            out.append(reply)
    return out


async def _put_conn(
    port: int, kind: str, queue: str, ids: range, size: int, depth: int, lat: list[float]
) -> None:
    reader, writer = await _open(port)
    conn = ClientConnection()
    try:
        for batch in _batches(ids, depth):
            data = b"".join(
                [
                    conn.send(Set(f"k{i}" if kind == "memcached" else queue, 0, 0,
                                  make_payload(i, size)))
                    for i in batch
                ]
            )  # fmt: skip
            t0 = time.perf_counter_ns()
            writer.write(data)
            got = await replies(reader, conn)
            lat.append((time.perf_counter_ns() - t0) / 1000.0)
            for reply in got:
                if reply is not Status.STORED:
                    raise LoadgenError(f"set not STORED: {reply}")
    finally:
        writer.close()


async def _take_conn(
    port: int,
    kind: str,
    key: str,
    own_ids: range,
    depth: int,
    lat: list[float],
    out: Tally,
) -> None:
    reader, writer = await _open(port)
    conn = ClientConnection()
    try:
        if kind == "memcached":
            for batch in _batches(own_ids, depth):
                t0 = time.perf_counter_ns()
                writer.write(b"".join([conn.send(parse_get_key(b"k%d" % i)) for i in batch]))
                for reply in await replies(reader, conn):
                    if not isinstance(reply, Values):
                        raise LoadgenError(f"unexpected reply to get: {reply}")
                    if not reply.items:
                        raise LoadgenError("memcached lost a key (cache too small?)")
                    out.add(reply.items[0].data)
                lat.append((time.perf_counter_ns() - t0) / 1000.0)
            return
        get = parse_get_key(key.encode())
        drained = False
        while not drained:
            t0 = time.perf_counter_ns()
            writer.write(b"".join([conn.send(get) for _ in range(depth)]))
            for reply in await replies(reader, conn):
                if not isinstance(reply, Values):
                    raise LoadgenError(f"unexpected reply to get: {reply}")
                if reply.items:
                    out.add(reply.items[0].data)
                else:
                    # All producers are done, so an empty reply means the queue is drained.
                    drained = True
            lat.append((time.perf_counter_ns() - t0) / 1000.0)
    finally:
        writer.close()


async def _gather(coros: list[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*coros))


def _run(main: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool) -> T:
    if use_uvloop:
        try:
            import uvloop

            return uvloop.run(main())
        except ImportError:
            log.info("uvloop is not installed; using the default event loop")
    return asyncio.run(main())


def _timed(
    main: Callable[[], Coroutine[Any, Any, Any]], use_uvloop: bool, pid: int | None
) -> tuple[float, int | None]:
    """Run `main`; its wall seconds, and the server's CPU nanoseconds meanwhile (with a pid)."""
    cpu0 = procstat.cpu_ns(pid) if pid else None
    t0 = time.perf_counter()
    _run(main, use_uvloop)
    seconds = time.perf_counter() - t0
    cpu = procstat.cpu_ns(pid) - cpu0 if pid and cpu0 is not None else None
    return seconds, cpu


def _phase(messages: int, seconds: float, lat: list[float], cpu_ns: int | None) -> LoadPhase:
    return LoadPhase(
        messages=messages,
        seconds=seconds,
        batch_p50_us=percentile(lat, 50),
        batch_p99_us=percentile(lat, 99),
        server_cpu_us_per_msg=None if cpu_ns is None or not messages else cpu_ns / 1000 / messages,
    )


def enqueue(
    port: int,
    kind: str,
    messages: int,
    size: int,
    connections: int,
    depth: int,
    *,
    queue: str = QUEUE,
    pid: int | None = None,
    use_uvloop: bool = True,
) -> LoadPhase:
    """Send `messages` sets over `connections` connections, `depth` in flight on each."""
    lat: list[float] = []

    async def main() -> list[None]:
        return await _gather(
            [
                _put_conn(port, kind, queue, range(c, messages, connections), size, depth, lat)
                for c in range(connections)
            ]
        )

    seconds, cpu = _timed(main, use_uvloop, pid)
    return _phase(messages, seconds, lat, cpu)


def dequeue(
    port: int,
    kind: str,
    messages: int,
    connections: int,
    depth: int,
    *,
    size: int,
    mode: str = "plain",
    queue: str = QUEUE,
    pid: int | None = None,
    use_uvloop: bool = True,
) -> tuple[LoadPhase, Tally]:
    """Drain the queue (or read back memcached's keys); return the phase and what came back."""
    lat: list[float] = []
    out = Tally(size)
    key = f"{queue}/close/open" if mode == "reliable" else queue

    async def main() -> list[None]:
        return await _gather(
            [
                _take_conn(port, kind, key, range(c, messages, connections), depth, lat, out)
                for c in range(connections)
            ]
        )

    seconds, cpu = _timed(main, use_uvloop, pid)
    return _phase(out.returned, seconds, lat, cpu), out


def run(
    port: int,
    kind: str,
    messages: int,
    size: int,
    connections: int,
    depth: int,
    *,
    mode: str = "plain",
    pid: int | None = None,
    use_uvloop: bool = True,
) -> LoadResult:
    enq = enqueue(port, kind, messages, size, connections, depth, pid=pid, use_uvloop=use_uvloop)
    deq, tally = dequeue(
        port,
        kind,
        messages,
        connections,
        depth,
        size=size,
        mode=mode,
        pid=pid,
        use_uvloop=use_uvloop,
    )
    missing, corrupt, duplicates = tally.verify(messages)
    return LoadResult(
        kind=kind,
        mode=mode,
        connections=connections,
        depth=depth,
        size=size,
        enqueue=enq,
        dequeue=deq,
        returned=tally.returned,
        missing=missing,
        corrupt=corrupt,
        duplicates=duplicates,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=("kestrelq", "memcached", "pyfloor"), default="kestrelq")
    parser.add_argument("--mode", choices=("plain", "reliable"), default="plain")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--pid", type=int, help="server pid, to report its CPU per message")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(
        args.port,
        args.kind,
        args.messages,
        args.size,
        args.connections,
        args.depth,
        mode=args.mode,
        pid=args.pid,
        use_uvloop=not args.no_uvloop,
    )
    out = asdict(result)
    out["enqueue"]["rate"] = result.enqueue.rate
    out["dequeue"]["rate"] = result.dequeue.rate
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0 if result.complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
