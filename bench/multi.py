"""Several queue servers on this machine: spread, producer overhead, worker pick-up latency.

    python -m bench.multi [--messages 3000] [--samples 40]

For N = 1, 2, 3 kestrelq servers (fsync never, so the server's disk does not hide the client's
cost) it prints:

- how many of `--messages` each server got from one `kestrelq.producer.Producer` (evenness);
- the producer's cost per message: wall time and this process's CPU time per acknowledged
  `send`, beside a bare pymemcache `set(noreply=False)` to one server (the floor);
- a worker's pick-up latency when only the last server has work: one message at a time, from
  just before its `set` to the handler's call, `--samples` times at random phases;
- each server's own CPU per message (from /proc, all its threads): for the producer's `set`s,
  and for a burst worker draining them again (`get/close/open`), so a whole message's cost;
- failover: one of three servers killed (SIGKILL) under a producer; the slowest send after
  the kill (the one that met the dead server and went on to the next) against the median;
- the projection for N machines, one server each, from those figures (its assumptions are
  printed with it).

On a 2-core machine shared with the servers, aggregate throughput cannot grow with N; these
figures are about the client's own overhead, latency and each server's cost per message,
which is what a projection to several machines can be built on.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from pymemcache.client.base import Client as Memcache

from bench.procstat import cpu_ns
from bench.servers import ServerProc, ServerSpec, start
from kestrelq.client import Client
from kestrelq.credentials import Credentials
from kestrelq.producer import Producer
from kestrelq.worker.runtime import DEFAULT_IDLE_SLICE_MS, Worker

T = TypeVar("T")


def per_message(messages: int, send: Callable[[int], object]) -> tuple[float, float]:
    """(wall µs, CPU µs) per call of `send(i)`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(messages):
        send(i)
    return ((time.perf_counter() - wall) / messages * 1e6,
            (time.process_time() - cpu) / messages * 1e6)  # fmt: skip


def items(port: int, queue: str) -> int:
    with Client("127.0.0.1", port, timeout=10) as client:
        return int(client.dump_stats(queue).get(queue, {}).get("items", "0"))


def pickup_latency(procs: list[ServerProc], samples: int) -> list[float]:
    seen = threading.Event()
    handled_at: list[float] = []

    def handler(data: bytes) -> None:
        handled_at.append(time.perf_counter())
        seen.set()

    worker = Worker(
        "lat", handler, servers=[("127.0.0.1", p.port) for p in procs], handle_signals=False
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    latencies: list[float] = []
    last = Memcache(("127.0.0.1", procs[-1].port), timeout=10)
    try:
        for _ in range(samples):
            # Random spacing: the message lands at a random phase of the worker's rounds.
            time.sleep(random.uniform(0.05, 0.35))
            seen.clear()
            sent = time.perf_counter()
            last.set("lat", b"x", noreply=False)
            if not seen.wait(30):
                raise RuntimeError("the worker did not pick the message up in 30 s")
            latencies.append((handled_at[-1] - sent) * 1000)
    finally:
        last.close()
        worker.request_stop()
        thread.join(30)
    return latencies


def idle_cpu_rate(procs: list[ServerProc], seconds: float = 2.0) -> list[float]:
    """CPU µs per second each server uses with no client: its tick (expiry, fsync, stats)."""
    before = [cpu_ns(p.pid) for p in procs]
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    return [(cpu_ns(p.pid) - b) / 1000 / elapsed for p, b in zip(procs, before, strict=True)]


def server_cpu_us(
    procs: list[ServerProc], idle_rate: list[float], run: Callable[[], T]
) -> tuple[T, list[float]]:
    """What `run()` returned, and the CPU µs each server spent on it (its idle tick taken out).

    The idle share matters: a server that gets 1/N of the messages over the same wall time
    would otherwise be charged N times its tick per message.
    """
    before = [cpu_ns(p.pid) for p in procs]
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    used = [(cpu_ns(p.pid) - b) / 1000 for p, b in zip(procs, before, strict=True)]
    return result, [max(0.0, u - r * elapsed) for u, r in zip(used, idle_rate, strict=True)]


def drain(procs: list[ServerProc], queue: str) -> int:
    """A burst worker reads `queue` empty on every server; the messages it handled."""
    handled = 0

    def handler(data: bytes) -> None:
        nonlocal handled
        handled += 1

    servers = [("127.0.0.1", p.port) for p in procs]
    Worker(queue, handler, servers=servers, burst=True, handle_signals=False).run()
    return handled


def projection(server_us: float, client_us: float, pickup_ms: float, n_max: int = 8) -> None:
    """What N machines, one server each, would carry, from the per-message figures."""
    per_server = 1e6 / server_us
    print(f"projection: one server is one event loop on one core: at most {per_server:,.0f} "
          f"msg/s (set + get/close/open at {server_us:.0f} µs of server CPU)")  # fmt: skip
    for n in (1, 2, 3, n_max):
        print(f"  N={n}: {n * per_server:9,.0f} msg/s, producers' CPU "
              f"{n * per_server * client_us / 1e6:4.1f} cores, idle pick-up up to "
              f"{(n - 1) * DEFAULT_IDLE_SLICE_MS + pickup_ms:5.0f} ms")  # fmt: skip
    print("  assumptions: one server per machine with its own core and disk (fsync never here: "
          "with fsync always each machine's disk sets the pace instead); producers and workers "
          "on other cores; messages spread evenly (measured); servers share nothing, so "
          "nothing else grows with N; the network adds its round trip to every send")  # fmt: skip


def failover(procs: list[ServerProc], messages: int) -> tuple[float, float, int]:
    """(slowest send ms, median send ms, sends after the kill) with procs[1] killed midway."""
    listing = [("127.0.0.1", p.port) for p in procs]
    times: list[float] = []
    with Producer(listing, credentials=Credentials()) as producer:
        for i in range(messages):
            producer.send("failover", b"m%d" % i)
        procs[1].stop(signal.SIGKILL)
        for i in range(messages):
            started = time.perf_counter()
            producer.send("failover", b"m%d" % i)
            times.append((time.perf_counter() - started) * 1000)
    return max(times), statistics.median(times), len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kq-multi-bench-") as tmp:
        procs = [start(ServerSpec("kestrelq", fsync="never"), Path(tmp)) for _ in range(3)]
        try:
            floor = Memcache(("127.0.0.1", procs[0].port), timeout=10, no_delay=True)
            wall, cpu = per_message(
                args.messages, lambda i: floor.set("floor", b"m%d" % i, noreply=False)
            )
            floor.close()
            print(f"bare pymemcache set, 1 server: {wall:7.1f} µs wall  {cpu:7.1f} µs CPU /msg")
            idle_rate = idle_cpu_rate(procs)
            print(f"servers idle: {' '.join(f'{r:.0f}' for r in idle_rate)} µs CPU per second")
            whole_us: list[float] = []
            client_us: list[float] = []
            for n in (1, 2, 3):
                queue = f"spread{n}"
                listing = [("127.0.0.1", p.port) for p in procs[:n]]
                with Producer(listing, credentials=Credentials()) as producer:

                    def send(i: int, producer: Producer = producer, queue: str = queue) -> None:
                        producer.send(queue, b"m%d" % i)

                    (wall, cpu), set_cpu = server_cpu_us(
                        procs[:n], idle_rate[:n], partial(per_message, args.messages, send)
                    )
                client_us.append(cpu)
                counts = [items(p.port, queue) for p in procs[:n]]
                print(f"Producer, N={n}:               {wall:7.1f} µs wall  {cpu:7.1f} µs CPU "
                      f"/msg   per server {counts}")  # fmt: skip
                drained, get_cpu = server_cpu_us(
                    procs[:n], idle_rate[:n], partial(drain, procs[:n], queue)
                )
                if drained != args.messages:
                    raise RuntimeError(f"drained {drained} of {args.messages}")
                set_us = [c / k for c, k in zip(set_cpu, counts, strict=True)]
                get_us = [c / k for c, k in zip(get_cpu, counts, strict=True)]
                whole_us.append(statistics.mean(s + g for s, g in zip(set_us, get_us, strict=True)))
                print(f"  server CPU per message, each server: set "
                      f"{' '.join(f'{u:5.1f}' for u in set_us)} µs, get/close/open "
                      f"{' '.join(f'{u:5.1f}' for u in get_us)} µs")  # fmt: skip
            pickup_1 = 0.0
            for n in (1, 2, 3):
                lat = sorted(pickup_latency(procs[:n], args.samples))
                p90 = lat[int(len(lat) * 0.9) - 1]
                pickup_1 = pickup_1 or statistics.median(lat)
                print(f"pick-up latency, work on 1 of {n}: median {statistics.median(lat):6.1f} "
                      f"ms  p90 {p90:6.1f} ms  max {lat[-1]:6.1f} ms")  # fmt: skip
            slowest, median, sends = failover(procs, args.messages // 3)
            print(f"failover, 1 of 3 killed: slowest send {slowest:.2f} ms, median "
                  f"{median:.3f} ms over {sends} sends after the kill, none refused")  # fmt: skip
            projection(statistics.median(whole_us), statistics.median(client_us), pickup_1)
        finally:
            for p in procs:
                p.stop()


if __name__ == "__main__":
    main()
