"""`python -m bench.security`: what TLS and authentication cost, side by side in one run.

The matrix's client pattern (bench.runner): C client processes `set` N messages through
pymemcache, then take them all with `get q/close/open`; each client logs in and speaks TLS
as every client of ours does (kestrelq.credentials, from KESTRELQ_* set for the run). Five
set-ups of one server build, fsync never (so that the disk does not hide the cost): plain,
plain + login, TLS, TLS + login, mutual TLS + login. Each row is the median of R runs on a
fresh server; the login happens once per connection, so its cost is in the connect, not in
the rates; TLS costs on every message (encryption, and one more copy per read and write).

Certificates are made with the `openssl` command (kestrelq.certs) into a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.runner import RunConfig, RunResult, _drive
from bench.servers import ServerSpec, free_port, start
from kestrelq.certs import openssl_ca, openssl_cert


@dataclass(frozen=True)
class Setup:
    label: str
    login: bool = False
    tls: bool = False
    mutual: bool = False


SETUPS = (
    Setup("plain"),
    Setup("plain + login", login=True),
    Setup("TLS", tls=True),
    Setup("TLS + login", login=True, tls=True),
    Setup("mutual TLS + login", login=True, tls=True, mutual=True),
)


def _server_args(s: Setup, d: Path, tls_port: int) -> tuple[str, ...]:
    args: tuple[str, ...] = ()
    if s.login:
        args += ("--auth-file", str(d / "users"))
    if s.tls:
        args += ("--tls-port", str(tls_port), "--tls-cert", str(d / "server.pem"),
                 "--tls-key", str(d / "server.key"))  # fmt: skip
    if s.mutual:
        args += ("--tls-ca", str(d / "ca.pem"), "--tls-verify", "required")
    return args


def _client_env(s: Setup, d: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    if s.login:
        env |= {"KESTRELQ_USER": "bench", "KESTRELQ_PASSWORD": "bench-password"}
    if s.tls:
        env["KESTRELQ_TLS_CA"] = str(d / "ca.pem")
    if s.mutual:
        env |= {"KESTRELQ_TLS_CERT": str(d / "client.pem"),
                "KESTRELQ_TLS_KEY": str(d / "client.key")}  # fmt: skip
    return env


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    # The spawned clients inherit this process's environment; the server is already started.
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_setup(s: Setup, cfg: RunConfig, d: Path, work: Path) -> RunResult:
    tls_port = free_port()
    spec = ServerSpec("kestrelq", fsync="never", extra_args=_server_args(s, d, tls_port))
    server = start(spec, work)
    try:
        with _environ(_client_env(s, d)):
            port = tls_port if s.tls else server.port
            result = _drive(cfg, port, server.pid, s.label)
    finally:
        server.stop()
    if not result.complete:
        raise RuntimeError(f"{s.label}: messages lost or damaged: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.security", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    p.add_argument("-n", "--messages", type=int, default=5000)
    p.add_argument("-s", "--size", type=int, default=64)
    p.add_argument("-c", "--clients", default="1,4")
    p.add_argument("-r", "--repeat", type=int, default=3)
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="kq-bench-security-") as tmp:
        d = Path(tmp)
        openssl_ca(d, "ca")
        openssl_cert(d, "server", "kestrelq-bench", "ca", "serverAuth")
        openssl_cert(d, "client", "bench", "ca", "clientAuth")
        users = d / "users"
        users.write_text("bench:bench-password\n")
        users.chmod(0o600)
        print(f"kestrelq fsync=never, {args.messages} messages of {args.size} B, "
              f"median of {args.repeat} runs")  # fmt: skip
        print("| set-up | clients | set msg/s | get/close/open msg/s | set p99 µs | "
              "take p99 µs | server CPU µs/msg (set, take) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for c in clients:
            for s in SETUPS:
                cfg = RunConfig("kestrelq", "reliable", c, args.messages, args.size)
                runs = [run_setup(s, cfg, d, d) for _ in range(args.repeat)]
                med = statistics.median
                print(
                    f"| {s.label} | {c} | {med(r.enqueue.rate for r in runs):,.0f} | "
                    f"{med(r.dequeue.rate for r in runs):,.0f} | "
                    f"{med(r.enqueue.percentile(99) for r in runs):,.0f} | "
                    f"{med(r.dequeue.percentile(99) for r in runs):,.0f} | "
                    f"{med(r.enqueue.cpu_us_per_msg for r in runs):.1f}, "
                    f"{med(r.dequeue.cpu_us_per_msg for r in runs):.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
