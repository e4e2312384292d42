"""What the /metrics port costs: set and reliable-get throughput with metrics off and on.

    python -m bench.metrics_cost --messages 50000 --repeat 5

Each round starts a fresh server with metrics off and one with metrics on (in alternating
order, so that neither always runs on a warmer machine), each with `--idle-queues` extra
queues holding an item, so that a scrape has queues to walk. With metrics on, a scraper
fetches /metrics every `--scrape-every` seconds (Prometheus' interval, shortened) for
the whole run (from a process of its own, as Prometheus is), and every scrape must answer
200. The load is bench.loadgen's pipelined sets,
then reliable reads (`get q/close/open`) of the same messages. Medians are reported.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import loadgen, procstat, servers


class Scraper:
    """A process that GETs /metrics every `every_s` seconds until stopped, as Prometheus is:
    a thread in this process would take the load generator's GIL and slow the client, not
    the server. It prints one line per scrape: the status (0 when it failed) and the size."""

    def __init__(self, port: int, every_s: float) -> None:
        url = f"http://{servers.HOST}:{port}/metrics"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.metrics_cost", "--scrape", url, str(every_s)],
            stdout=subprocess.PIPE, text=True, cwd=str(servers.REPO_ROOT),
        )  # fmt: skip
        self.scrapes = self.failures = self.bytes = 0
        assert self.proc.stdout is not None
        # The load starts once the first scrape is done: every run is scraped from its start.
        self._first = self.proc.stdout.readline()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        for line in [self._first, *out.splitlines()]:
            status, size = (int(x) for x in line.split())
            self.scrapes += status == 200
            self.failures += status != 200
            self.bytes = size


def scrape_forever(url: str, every_s: float) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                print(reply.status, len(reply.read()), flush=True)
        except OSError:
            print(0, 0, flush=True)
        time.sleep(every_s)


def _fill_idle_queues(port: int, count: int) -> None:
    payload = b"".join(b"set idle%d 0 0 4\r\nidle\r\n" % i for i in range(count))
    with socket.create_connection((servers.HOST, port), timeout=30) as sock:
        sock.sendall(payload)
        got = b""
        while got.count(b"STORED\r\n") < count:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the connection while filling queues")
            got += chunk


def one_run(args: argparse.Namespace, work: Path, metrics: bool) -> dict[str, float]:
    extra: tuple[str, ...] = ()
    metrics_port = 0
    if metrics:
        metrics_port = servers.free_port()
        extra = ("--metrics-port", str(metrics_port))
    spec = servers.ServerSpec("kestrelq", fsync=args.fsync, extra_args=extra)
    proc = servers.start(spec, work)
    scraper = None
    try:
        _fill_idle_queues(proc.port, args.idle_queues)
        if metrics:
            scraper = Scraper(metrics_port, args.scrape_every)
        result = loadgen.run(proc.port, "kestrelq", args.messages, args.size, args.connections,
                             args.depth, mode="reliable", pid=proc.pid)  # fmt: skip
    finally:
        try:
            if scraper is not None:
                scraper.stop()
        finally:
            proc.stop()
    if not result.complete:
        raise RuntimeError(f"messages lost or damaged: {result}")
    row = {
        "set_per_s": result.enqueue.rate,
        "get_per_s": result.dequeue.rate,
        "set_cpu_us": result.enqueue.server_cpu_us_per_msg or 0.0,
        "get_cpu_us": result.dequeue.server_cpu_us_per_msg or 0.0,
    }
    if scraper is not None:
        if scraper.failures or not scraper.scrapes:
            raise RuntimeError(f"scrapes: {scraper.scrapes} answered, {scraper.failures} failed")
        row["scrapes"] = scraper.scrapes
        row["scrape_bytes"] = scraper.bytes
    return row


def scrape_cost(args: argparse.Namespace, work: Path, scrapes: int = 20) -> float:
    """Server CPU milliseconds per scrape of an otherwise idle server with the idle queues."""
    metrics_port = servers.free_port()
    extra = ("--metrics-port", str(metrics_port))
    proc = servers.start(servers.ServerSpec("kestrelq", fsync=args.fsync, extra_args=extra), work)
    try:
        _fill_idle_queues(proc.port, args.idle_queues)
        url = f"http://{servers.HOST}:{metrics_port}/metrics"
        urllib.request.urlopen(url, timeout=30).close()  # the first: imports, thread start
        before = procstat.cpu_ns(proc.pid)
        for _ in range(scrapes):
            with urllib.request.urlopen(url, timeout=30) as reply:
                reply.read()
        return (procstat.cpu_ns(proc.pid) - before) / 1e6 / scrapes
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--fsync", default="never", help="the servers' fsync policy (never)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians kept (5)")
    parser.add_argument("--idle-queues", type=int, default=200)
    parser.add_argument("--scrape-every", type=float, default=1.0, metavar="S")
    parser.add_argument("--scrape", nargs=2, metavar=("URL", "S"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scrape:
        return scrape_forever(args.scrape[0], float(args.scrape[1]))
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="kq-metrics-cost-") as tmp:
        per_scrape_ms = statistics.median(scrape_cost(args, Path(tmp)) for _ in range(3))
        for round_ in range(args.repeat):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            for metrics in order:
                runs[metrics].append(one_run(args, Path(tmp), metrics))
    print(f"{args.messages} messages of {args.size} B, {args.connections} connections x "
          f"{args.depth} deep, fsync {args.fsync}, {args.idle_queues} idle queues, "
          f"scrape every {args.scrape_every:g} s; median of {args.repeat} rounds, "
          f"at {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")  # fmt: skip
    keys = ("set_per_s", "get_per_s", "set_cpu_us", "get_cpu_us")
    print(f"{'metrics':<8}" + "".join(f"{k:>14}" for k in keys))
    medians = {m: {k: statistics.median(r[k] for r in runs[m]) for k in keys} for m in runs}
    for metrics in (False, True):
        label = "on" if metrics else "off"
        print(f"{label:<8}" + "".join(f"{medians[metrics][k]:>14.1f}" for k in keys))
    for metrics in (False, True):
        for row in runs[metrics]:
            label = "  on run" if metrics else "  off run"
            print(f"{label:<8}" + "".join(f"{row[k]:>14.1f}" for k in keys))
    ratio = "".join(f"{medians[True][k] / medians[False][k]:>14.3f}" for k in keys)
    print(f"{'on/off':<8}{ratio}")
    scrapes = sum(r["scrapes"] for r in runs[True])
    size = statistics.median(r["scrape_bytes"] for r in runs[True])
    print(f"{int(scrapes)} scrapes during the 'on' runs, all answered; {int(size)} bytes each")
    print(f"server CPU per scrape, idle server with {args.idle_queues} queues: "
          f"{per_scrape_ms:.1f} ms (median of 3 servers x 20 scrapes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
