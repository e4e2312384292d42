"""A mixed load of well-behaved and misbehaving clients against one real server.

Well-behaved producers set unique ids on one queue and count an id as acknowledged only after
STORED; well-behaved workers take them with reliable reads (`get q/close/open/t=...`), as
`kestrelq work` does. Beside them, for the same bounded time, misbehaving clients do what a
careless or hostile client does:

- slow senders dribble a command a byte at a time and never finish it;
- non-readers pipeline requests and never read a reply;
- garbage senders write random bytes;
- huge senders declare items far over the limit, or start big sets and stall half way;
- queue flooders create queues without end, and `get` queues that do not exist;
- idle holders open connections and send nothing.

While it runs, the server's resident memory and open descriptors are sampled from /proc. At the
end the producers stop, the workers drain the queue, and the report says whether every
acknowledged id was delivered, how high memory and descriptors went, and the well-behaved
clients' latencies. The test (test_soak.py) asserts on the counts and bounds, never on latency:
a loaded machine is slower, not wrong.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pymemcache.client.base import Client

QUEUE = "soak"


@dataclass
class Counters:
    """What one kind of client did; updated by its threads under the GIL (ints only)."""

    connections: int = 0
    closed_by_server: int = 0
    replies: int = 0
    errors: int = 0


@dataclass
class SoakReport:
    seconds: float
    acknowledged: set[str] = field(default_factory=set)
    delivered: list[str] = field(default_factory=list)
    set_latency_s: list[float] = field(default_factory=list)
    get_latency_s: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    misbehaving: dict[str, Counters] = field(default_factory=dict)
    producer_errors: int = 0

    @property
    def lost(self) -> set[str]:
        return self.acknowledged - set(self.delivered)

    @property
    def duplicates(self) -> int:
        return len(self.delivered) - len(set(self.delivered))

    def summary(self) -> str:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f} ms"

        lines = [
            f"soak: {self.seconds:.0f} s",
            f"  acknowledged {len(self.acknowledged)}, delivered {len(set(self.delivered))},"
            f" lost {len(self.lost)}, duplicates {self.duplicates},"
            f" producer errors {self.producer_errors}",
            f"  set  p50 {pct(self.set_latency_s, 0.5)}  p99 {pct(self.set_latency_s, 0.99)}"
            f"  ({len(self.set_latency_s)} sets)",
            f"  get  p50 {pct(self.get_latency_s, 0.5)}  p99 {pct(self.get_latency_s, 0.99)}"
            f"  ({len(self.get_latency_s)} reliable reads with an item)",
            f"  server RSS max {max(self.rss_bytes, default=0) / 1e6:.0f} MB"
            f" (median {statistics.median(self.rss_bytes or [0]) / 1e6:.0f} MB),"
            f" descriptors max {max(self.fds, default=0)}",
        ]
        for name, c in sorted(self.misbehaving.items()):
            lines.append(
                f"  {name:<14} connections {c.connections:>6}, closed by server"
                f" {c.closed_by_server:>6}, replies {c.replies:>7}, errors {c.errors:>6}"
            )
        return "\n".join(lines)


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    """Runs every client kind in threads against 127.0.0.1:`port` for `seconds`."""

    def __init__(
        self,
        port: int,
        pid: int,
        seconds: float,
        *,
        max_item_bytes: int,
        producers: int = 2,
        workers: int = 2,
        seed: int = 1,
    ) -> None:
        self.port = port
        self.pid = pid
        self.seconds = seconds
        self.max_item_bytes = max_item_bytes
        self.producers = producers
        self.workers = workers
        self.rng = random.Random(seed)
        self.report = SoakReport(seconds)
        self.stop_misbehaving = threading.Event()
        self.stop_producing = threading.Event()
        self.lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _sock(self, timeout_s: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _client(self) -> Client:
        return Client(("127.0.0.1", self.port), timeout=30, connect_timeout=10)

    def _misbehave(self, name: str, body: Callable[[Counters, random.Random], None]) -> None:
        """Loop `body` (one connection's worth of misbehaviour) until told to stop."""
        counters = self.report.misbehaving.setdefault(name, Counters())
        rng = random.Random(self.rng.random())
        while not self.stop_misbehaving.is_set():
            try:
                body(counters, rng)
            except (ConnectionError, TimeoutError, OSError):
                counters.errors += 1
                # The server may be refusing connections at its limit: back off a little.
                self.stop_misbehaving.wait(0.05)

    def _until_closed(self, sock: socket.socket, counters: Counters, wait_s: float) -> None:
        """Read (and drop) what the server sends until it closes or `wait_s` passes."""
        sock.settimeout(0.2)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not self.stop_misbehaving.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                counters.closed_by_server += 1
                return
            if not data:
                counters.closed_by_server += 1
                return
            counters.replies += data.count(b"\n")

    # -- misbehaving clients ------------------------------------------------------------------

    def slow_sender(self, counters: Counters, rng: random.Random) -> None:
        with self._sock() as sock:
            counters.connections += 1
            line = b"set slow 0 0 5\r\nhello\r\n"
            sock.settimeout(0.2)
            for byte in line[: rng.randrange(1, len(line) - 1)]:
                if self.stop_misbehaving.wait(0.3):
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    counters.closed_by_server += 1
                    return
            self._until_closed(sock, counters, wait_s=3600)

    def non_reader(self, counters: Counters, rng: random.Random) -> None:
        with self._sock() as sock:
            counters.connections += 1
            sock.settimeout(1.0)
            request = b"stats\r\nget nosuch_queue\r\nversion\r\n" * 200
            sent = 0
            while not self.stop_misbehaving.is_set():
                try:
                    sent += sock.send(request)
                except TimeoutError:
                    # The server stopped reading us: it is applying back pressure. Hold on.
                    self.stop_misbehaving.wait(0.5)
                except OSError:
                    counters.closed_by_server += 1
                    return

    def garbage(self, counters: Counters, rng: random.Random) -> None:
        with self._sock() as sock:
            counters.connections += 1
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
            with contextlib.suppress(OSError):
                sock.sendall(junk + b"\r\n")
            self._until_closed(sock, counters, wait_s=2)

    def huge(self, counters: Counters, rng: random.Random) -> None:
        with self._sock() as sock:
            counters.connections += 1
            if rng.random() < 0.5:
                # Far over the limit: refused from the set line alone.
                sock.sendall(b"set huge 0 0 999999999999\r\n")
            else:
                # Under the limit, started and abandoned half way.
                size = self.max_item_bytes - 1
                sock.sendall(b"set bighalf 0 0 %d\r\n" % size)
                with contextlib.suppress(OSError):
                    sock.sendall(b"x" * (size // 2))
            self._until_closed(sock, counters, wait_s=3600)

    def queue_flood(self, counters: Counters, rng: random.Random) -> None:
        with self._sock() as sock:
            counters.connections += 1
            base = rng.randrange(1 << 30)
            batch = b"".join(
                b"set flood_%d 0 0 1\r\nx\r\nget ghost_%d\r\n" % (base + i, base + i)
                for i in range(100)
            )
            sock.sendall(batch)
            sock.sendall(b"version\r\n")
            data = b""
            sock.settimeout(30)
            while b"VERSION" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    counters.closed_by_server += 1
                    return
                data += chunk
            counters.replies += data.count(b"\n")
            counters.errors += data.count(b"ERROR")

    def idle_holder(self, counters: Counters, rng: random.Random) -> None:
        with self._sock() as sock:
            counters.connections += 1
            self._until_closed(sock, counters, wait_s=3600)

    # -- well-behaved clients -----------------------------------------------------------------

    def producer(self, index: int) -> None:
        client = self._client()
        n = 0
        while not self.stop_producing.is_set():
            ident = f"p{index}-{n}"
            n += 1
            start = time.monotonic()
            try:
                stored = client.set(QUEUE, ident.encode() + b":" + b"v" * 200, noreply=False)
            except Exception:
                # Outcome unknown: the id is neither acknowledged nor retried.
                self.report.producer_errors += 1
                client.close()
                continue
            took = time.monotonic() - start
            if stored:
                with self.lock:
                    self.report.acknowledged.add(ident)
                    self.report.set_latency_s.append(took)
        client.close()

    def worker(self) -> None:
        client = self._client()
        idle_after_stop = 0
        while True:
            start = time.monotonic()
            value = client.get(f"{QUEUE}/close/open/t=200")
            took = time.monotonic() - start
            if value is None:
                if self.stop_producing.is_set():
                    idle_after_stop += 1
                    if idle_after_stop >= 3:
                        break
                continue
            idle_after_stop = 0
            with self.lock:
                self.report.delivered.append(value.split(b":", 1)[0].decode())
                self.report.get_latency_s.append(took)
        client.get(f"{QUEUE}/close")
        client.close()

    # -- the run ---------------------------------------------------------------------------------

    def run(self, misbehavers: dict[str, int]) -> SoakReport:
        kinds: dict[str, Callable[[Counters, random.Random], None]] = {
            "slow_sender": self.slow_sender,
            "non_reader": self.non_reader,
            "garbage": self.garbage,
            "huge": self.huge,
            "queue_flood": self.queue_flood,
            "idle_holder": self.idle_holder,
        }
        threads = [
            threading.Thread(target=self._misbehave, args=(name, kinds[name]), daemon=True)
            for name, count in misbehavers.items()
            for _ in range(count)
        ]
        good = [threading.Thread(target=self.producer, args=(i,)) for i in range(self.producers)]
        workers = [threading.Thread(target=self.worker) for _ in range(self.workers)]
        for t in [*threads, *good, *workers]:
            t.start()
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            self.report.rss_bytes.append(proc_rss_bytes(self.pid))
            self.report.fds.append(proc_fds(self.pid))
            time.sleep(0.25)
        self.stop_producing.set()
        for t in good:
            t.join()
        for t in workers:
            t.join()
        # Whatever a worker still held when it left went back to the queue with its connection:
        # take it too, so that "lost" means lost, not "still queued".
        client = self._client()
        while (value := client.get(QUEUE)) is not None:
            self.report.delivered.append(value.split(b":", 1)[0].decode())
        client.close()
        self.stop_misbehaving.set()
        for t in threads:
            t.join(timeout=30)
        return self.report
