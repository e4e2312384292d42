"""Small helpers shared by every test area: polling with a deadline, free ports.

Tests never sleep for readiness: they poll a condition until a deadline with `wait_until`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kestrelq
from kestrelq.client import Client
from kestrelq.protocol.client import ClientConnection, encode
from kestrelq.protocol.commands import Set

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; return that value.

    Raises TimeoutError naming `what` (or the predicate) when the deadline passes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- a real queue server in a subprocess ------------------------------------------------------


class ServerProcess:
    """`python -m kestrelq serve` on a free port with its own data dir; restartable."""

    def __init__(
        self, data_dir: Path, *args: str, port: int = 0, env: dict[str, str] | None = None
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.args = list(args)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    def start(self, *extra: str, wait: bool = True) -> ServerProcess:
        cmd = [sys.executable, "-m", "kestrelq", "--log-level", "DEBUG", "serve"]
        cmd += ["--port", str(self.port), "--data-dir", str(self.data_dir), *self.args, *extra]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        def ready() -> bool:
            if not self.listening():
                return False
            try:
                return request(self.port, b"version\r\n", timeout_s=1).startswith(b"VERSION")
            except OSError:
                return False

        wait_until(ready, timeout_s, what=f"kestrelq on port {self.port}")

    def listening(self) -> bool:
        """This process has bound its ports (raises if it exited).

        A free port is only free when it is chosen: another test run on the machine may bind
        it first. Then this server fails to start, and whatever answers on the port is not it.
        The server's own "listening" line, with its pid, is the proof.
        """
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        return f"(pid {self.proc.pid}," in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode

    def client(self, **kwargs: object) -> Any:  # a pymemcache Client (pymemcache is untyped)
        from pymemcache.client.base import Client

        opts: dict[str, object] = {"timeout": 10, "connect_timeout": 5}
        opts.update(kwargs)
        return Client(("127.0.0.1", self.port), **opts)


@contextlib.contextmanager
def serving(
    data_dir: Path, *args: str, config: str | None = None, start: bool = True
) -> Iterator[ServerProcess]:
    """A server for a fixture: started (unless `start` is False), and at the end stopped if it
    still runs, which must exit 0 and leave no traceback in its log. `config` is the text of
    a TOML file written beside the data dir and passed with --config."""
    if config is not None:
        conf = data_dir.parent / "kestrelq.toml"
        conf.write_text(config)
        args = ("--config", str(conf), *args)
    proc = ServerProcess(data_dir, *args)
    if start:
        proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log(), proc.log()


def connect(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until(sock: socket.socket, terminator: bytes, limit_bytes: int = 1 << 26) -> bytes:
    """Read until the data ends with `terminator` or the peer closes."""
    data = b""
    while not data.endswith(terminator) and len(data) < limit_bytes:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    """Read until the peer closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def request(port: int, payload: bytes, timeout_s: float = 10.0) -> bytes:
    """Send `payload`, half-close, and return everything the server says before closing."""
    with connect(port, timeout_s) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


# ---- Prometheus metrics ----------------------------------------------------------------------

Samples = dict[tuple[str, str, str], float]


def scrape(port: int, prefix: str = "kestrelq_") -> Samples:
    """{(sample name, queue label, le label): value} of one scrape of 127.0.0.1:port/metrics,
    read with prometheus_client's own parser, as Prometheus reads it."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, s.labels.get("queue", ""), s.labels.get("le", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix)
    }


def scrape_or_none(port: int, prefix: str = "kestrelq_") -> Samples | None:
    """`scrape`, or None while nothing answers."""
    try:
        return scrape(port, prefix)
    except OSError:
        return None


# ---- supervisord: the rendered stack under a real supervisord ---------------------------------

REPO = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment for kestrelq child processes: the kestrelq these tests import (the
    checkout's, or build/compiled's under `make test-compiled`) importable, unbuffered output."""
    env = dict(os.environ)
    # The checkout stays on the path after it (app/ and bench/ live there only).
    package_root = str(Path(kestrelq.__file__).resolve().parent.parent)
    paths = [package_root, str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, paths)))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Supervisord:
    """A real supervisord started by a test, reached over XML-RPC with its password."""

    def __init__(
        self, conf: Path, http_port: int, log: Path, password: str = "", **env: str
    ) -> None:
        self.conf = conf
        self.http_port = http_port
        self.password = password or "test-" + os.urandom(6).hex()
        self.log_path = log
        environ = child_env(KESTRELQ_SUPERVISOR_PASSWORD=self.password, **env)
        cmd = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)

    def wait_ready(self, timeout_s: float = 60.0) -> Supervisord:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"supervisord exited with {self.proc.returncode}:\n"
                    + self.log_path.read_text(errors="replace")
                )
            return self.state() == "RUNNING"

        wait_until(ready, timeout_s, what="supervisord")
        return self

    def call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call `supervisor.<method>(*args)` on a fresh, closed-after connection."""
        password = urllib.parse.quote(self.password, safe="")
        url = f"http://kestrelq:{password}@127.0.0.1:{self.http_port}/RPC2"
        with xmlrpc.client.ServerProxy(url) as proxy:
            return getattr(proxy.supervisor, method)(*args)

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("getProcessInfo", name)
        return info

    def all_info(self) -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = self.call("getAllProcessInfo")
        return infos

    def running(self, name: str, not_pid: int = 0) -> dict[str, Any] | None:
        """The process info when `name` is RUNNING with a pid other than `not_pid`."""
        try:
            info = self.info(name)
        except (OSError, xmlrpc.client.Fault):
            return None
        if info["statename"] == "RUNNING" and info["pid"] not in (0, not_pid):
            return info
        return None

    def state(self) -> str:
        try:
            state: str = self.call("getState")["statename"]
            return state
        except OSError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (supervisord stops every program in order), SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# ---- raw wire client: server tests through real sockets -------------------------------------


class Wire:
    """One raw connection for exact-bytes tests: send any bytes, read whole replies as bytes.

    The reply framing is the client half's (`ClientConnection.expect_reply`): a reply is cut
    where it says the reply ends, and returned exactly as the server sent it.
    """

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = connect(port, timeout_s)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"server closed the connection; unread {self.buf!r}")
        self.buf += chunk
        return chunk

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def line(self) -> bytes:
        """One line, CRLF included."""
        while b"\r\n" not in self.buf:
            self._fill()
        return self.exact(self.buf.index(b"\r\n") + 2)

    def reply(self) -> bytes:
        """One complete reply, whatever its kind: a VALUE block through END, STAT or
        dump_stats lines through END, or one line."""
        conn = ClientConnection()
        conn.expect_reply()
        conn.receive_data(self.buf)
        while conn.next_event() is None:
            conn.receive_data(self._fill())
        return self.exact(conn.consumed)

    def call(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()

    def at_eof(self, timeout_s: float = 5.0) -> bool:
        """True when the server closed the connection (after any unread bytes)."""
        self.sock.settimeout(timeout_s)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def put(wire: Wire, queue: str, data: bytes, flags: int = 0, exptime: int = 0) -> None:
    """`set` one item and check that it was STORED (`set_reply` for other outcomes)."""
    assert set_reply(wire, queue, data, flags, exptime) == b"STORED\r\n"


def set_reply(wire: Wire, queue: str, data: bytes, flags: int = 0, exptime: int = 0) -> bytes:
    """`set` one item; the server's reply, exactly."""
    return wire.call(encode(Set(queue, flags, exptime, data)))


def put_all(port: int, queue: str, items: list[bytes]) -> None:
    """`set` every item, in order, on one connection."""
    with Wire(port) as w:
        for data in items:
            put(w, queue, data)


def value(key: str, data: bytes, flags: int = 0) -> bytes:
    """The exact reply to a get that hits: one VALUE block and END (spelled out here, not
    built by the server's own encoder, so that a test of the server's bytes checks them)."""
    return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key.encode(), flags, len(data), data)


def drain_replies(port: int, queue: str, limit: int = 100_000) -> list[bytes]:
    """Plain gets until the queue answers END: every VALUE reply, whole (flags included)."""
    got: list[bytes] = []
    with Wire(port) as w:
        for _ in range(limit):
            reply = w.call(f"get {queue}\r\n".encode())
            if reply == b"END\r\n":
                return got
            got.append(reply)
    raise AssertionError(f"{queue} did not drain in {limit} gets")


def drain(port: int, queue: str, limit: int = 100_000) -> list[bytes]:
    """The data of every item a drain hands out, in order."""
    got: list[bytes] = []
    with Client("127.0.0.1", port, timeout=10) as client:
        for _ in range(limit):
            item = client.get(queue)
            if item is None:
                return got
            got.append(item.data)
    raise AssertionError(f"{queue} did not drain in {limit} gets")


def server_stats(port: int) -> dict[str, str]:
    """The `stats` reply of the server on `port` as a dict (STAT name -> value)."""
    with Client("127.0.0.1", port, timeout=10) as client:
        return client.stats()


def render_test_stack(root: Path, **overrides: Any) -> tuple[Path, Any]:
    """Render conf/stack.toml into root/conf for a test: free ports, this Python, repo app/.

    Data, logs and the socket land in root/var/host (the description's relative paths).
    Returns (conf dir, the Stack used); `overrides` are extra `Overrides` fields.
    """
    from kestrelq.supervisord.files import make_dirs, write_files
    from kestrelq.supervisord.render import render_stack
    from kestrelq.supervisord.stack import Overrides, apply_overrides, load_stack

    out = root / "conf"
    paths = {"app_dir": str(REPO / "app"), **overrides.pop("paths", {})}
    fields: dict[str, Any] = {
        "port": free_port(),
        "http_port": free_port(),
        "worker_metrics_port": free_port(),
        "python": sys.executable,
        "paths": paths,
    }
    fields.update(overrides)
    stack = apply_overrides(load_stack(REPO / "conf" / "stack.toml"), Overrides(**fields))
    write_files(out, render_stack(stack))
    make_dirs(out, stack)
    return out, stack


# ---- journal files and a small disk -------------------------------------------------------


def journal_bytes(data_dir: Path) -> int:
    """The bytes of every journal file in `data_dir` (segments, and rewrites in progress).

    The server switches and deletes segments while this runs: a file listed and then gone
    before its size was read counts as nothing, as it is by then.
    """
    total = 0
    for path in data_dir.glob("*.kqj*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def segments(data_dir: Path, queue: str) -> list[Path]:
    """The journal segment files of `queue`, oldest first."""
    return sorted(data_dir.glob(f"{queue}.*.kqj"))


def record_spans(buf: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record of a whole journal file."""
    from kestrelq.journal.format import MAGIC, decode

    spans = []
    offset = len(MAGIC)
    while offset < len(buf):
        decoded = decode(buf, offset, len(buf))
        assert decoded is not None, f"journal ends inside a record at {offset}"
        spans.append((offset, decoded[1]))
        offset = decoded[1]
    return spans


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` at `mount_point` (a disk that fills up), unmounted at the end."""
    mount_point.mkdir(exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)]
    subprocess.run(cmd, check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill_disk(w: Wire, stored: list[bytes], refusals: list[bytes], queue: str = "full") -> None:
    """Set items on `queue` to the last page: big ones until refused, then ever smaller."""
    for size in (16 << 10, 4 << 10, 1 << 10, 128, 8, 1):
        for _ in range(1000):
            data = (b"%06d" % len(stored) + b"d" * size)[:size]
            reply = w.call(b"set %s 0 0 %d\r\n%s\r\n" % (queue.encode(), len(data), data))
            if reply != b"STORED\r\n":
                refusals.append(reply)
                break
            stored.append(data)
