"""Measure what careless clients cost a real server (not a test: prints figures).

    .venv/bin/python tests/server/measure_careless.py rss     # 8 unfinished 60 MiB sets
    .venv/bin/python tests/server/measure_careless.py stats   # 20 pipelined stats, 10,000 queues

`rss`: eight connections each send 60 MiB of a 64 MiB set and stop; prints the server's RSS
before and at its peak. `stats`: one client pipelines 20 `stats` with 10,000 queues and reads
the replies; another sends `version` in a loop meanwhile; prints the longest and the median
time that other client waited. Set PYTHONPATH to a checkout to measure another version.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import ServerProcess, Wire, connect


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def measure_rss(root: Path) -> None:
    proc = ServerProcess(root / "data", "--fsync", "never").start()
    assert proc.proc is not None
    pid = proc.proc.pid
    socks = [connect(proc.port, 120) for _ in range(8)]
    before = rss(pid)
    payload = b"set big 0 0 %d\r\n" % (64 << 20) + b"b" * (60 << 20)
    sent = [0] * len(socks)
    for s in socks:
        s.setblocking(False)
    peak, idle_rounds = before, 0
    while idle_rounds < 100:  # 100 rounds (~2 s) without a byte accepted: the server stopped
        progress = False
        for i, s in enumerate(socks):
            try:
                n = s.send(payload[sent[i] : sent[i] + (1 << 20)])
                sent[i] += n
                progress = progress or n > 0
            except BlockingIOError:
                pass
        peak = max(peak, rss(pid))
        idle_rounds = 0 if progress else idle_rounds + 1
        time.sleep(0.02)
    print(
        f"8 unfinished 64 MiB sets: {sum(sent) >> 20} MiB sent; server RSS "
        f"{before >> 20} MiB before, {peak >> 20} MiB peak"
    )
    for s in socks:
        s.close()
    proc.stop()


def measure_stats(root: Path) -> None:
    proc = ServerProcess(root / "data", "--fsync", "never").start()
    with Wire(proc.port) as w:
        for start in range(0, 10_000, 1000):
            w.send(b"".join(b"get q%05d\r\n" % i for i in range(start, start + 1000)))
            for _ in range(1000):
                w.reply()
        size = len(w.call(b"stats\r\n"))
    greedy = connect(proc.port, 120)
    done = threading.Event()

    def read() -> None:
        got = 0
        while got < 20 * size - 20 * 64:
            chunk = greedy.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    waits: list[float] = []
    with Wire(proc.port) as other:
        started = time.monotonic()
        greedy.sendall(b"stats\r\n" * 20)
        while not done.is_set():
            t0 = time.monotonic()
            other.call(b"version\r\n")
            waits.append(time.monotonic() - t0)
    total = time.monotonic() - started
    reader.join()
    print(
        f"20 pipelined stats, 10,000 queues ({size / 1e6:.1f} MB each) took {total:.2f} s; "
        f"other client: {len(waits)} round trips, longest wait {max(waits) * 1000:.0f} ms, "
        f"median {statistics.median(waits) * 1000:.1f} ms"
    )
    greedy.close()
    proc.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        {"rss": measure_rss, "stats": measure_stats}[sys.argv[1]](Path(tmp))
