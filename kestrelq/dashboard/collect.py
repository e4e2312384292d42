"""What the dashboard shows, sampled in the background: queues, workers, dead letters.

Rules:

1. A page view never waits on the network: a sampler thread asks every queue server
   (`dump_stats`, and a `peek` at each dead-letter queue) and every supervisord (XML-RPC
   `getAllProcessInfo`) every `interval_s`, each with a short timeout, all at once; requests
   read the last `Snapshot`. A server or supervisord that does not answer in time is shown as
   down with the reason, and the others are unaffected. A server whose status refuses the
   peek (QUIESCENT, being drained) is up: its figures are shown, with the refusal as a note
   and without the dead letters' heads.
2. Rates come from the history kept here (the last `window_s`): the put rate is the growth of
   `total_items`, the got rate the growth of `got_items` (items handed to readers, a
   redelivery again). A server without `got_items` gets what was put minus what the depth
   grew by (gets, expiry and dead letters all take items out). A counter that went back (a
   restart) starts over rather than giving a negative rate. The history of a queue that an
   answering server no longer lists (deleted, or a server taken off the list) is dropped, so
   per-tenant queues that come and go do not pile up; a server that did not answer keeps its
   queues' history until it answers again.
3. supervisord keeps no restart count, so the dashboard counts the restarts it sees: a
   process whose start time changed between two samples was started again. The count starts
   when the dashboard does, and says so.
4. A dead-letter queue is one named `<queue>_dead` (the server's default for `<queue>`), or
   one named in `dead_letters`; its actions move items back to `<queue>`.

`History` and `Restarts` are pure (time is passed in) and tested directly.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.parse
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kestrelq.client import Client
from kestrelq.credentials import Credentials
from kestrelq.errors import (
    ConfigError,
    KestrelqError,
    ReplyError,
    ServerQuiescent,
    ServerReadOnly,
    ServerUnavailable,
)
from kestrelq.requeue import digest
from kestrelq.servers import Address, Entry, ServerList, parse_entry

logger = logging.getLogger(__name__)

DEAD_SUFFIX = "_dead"
SUPERVISOR_PORT = 9001
PEEK_BYTES = 2048  # of a dead letter shown on the page; the rest is cut
# What a server's status (STATUS) answers a command it refuses, after SERVER_ERROR.
STATUS_REFUSALS = frozenset(e.reason for e in (ServerUnavailable, ServerReadOnly, ServerQuiescent))


def server_name(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dead_letter_target(queue: str, dead_letters: Mapping[str, str]) -> str | None:
    """The queue a dead-letter queue's items go back to; None if `queue` is not one."""
    if queue in dead_letters:
        return dead_letters[queue]
    if queue.endswith(DEAD_SUFFIX) and len(queue) > len(DEAD_SUFFIX):
        return queue[: -len(DEAD_SUFFIX)]
    return None


def parse_dead_letters(text: str) -> dict[str, str]:
    """`dead=queue,other_dlq=other` to {dead-letter queue: its queue}; ConfigError if bad."""
    found: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        dead, sep, queue = part.partition("=")
        if not sep or not dead.strip() or not queue.strip():
            raise ConfigError(f"dead-letter mapping {part!r}: write DEAD_QUEUE=QUEUE")
        found[dead.strip()] = queue.strip()
    return found


def parse_supervisors(text: str) -> list[Entry]:
    """`host[:port],...` (port 9001 when none is given) of the supervisords to ask."""
    entries: list[Entry] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        bare = part.removeprefix("http://").rstrip("/")
        has_port = bare.rsplit("]", 1)[-1].count(":") == 1
        entry = parse_entry(bare if has_port else f"{bare}:{SUPERVISOR_PORT}")
        if entry not in entries:
            entries.append(entry)
    return entries


# -- pure parts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    at: float
    items: int
    total: int
    got: int | None = None  # None: the server does not say


class History:
    """A queue's recent samples, and the rates and chart lines made from them (rule 2)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.points: deque[Point] = deque()

    def add(self, at: float, items: int, total: int, got: int | None = None) -> None:
        self.points.append(Point(at, items, total, got))
        while self.points and self.points[0].at < at - self.window_s:
            self.points.popleft()

    def rates(self) -> list[tuple[float, float, float]]:
        """(time, put per second, got per second) between each two samples."""
        out: list[tuple[float, float, float]] = []
        for a, b in zip(self.points, list(self.points)[1:], strict=False):
            dt = b.at - a.at
            if dt <= 0:
                continue
            put = _growth(a.total, b.total)
            if a.got is not None and b.got is not None:
                got = _growth(a.got, b.got)
            else:
                got = max(0, put - (b.items - a.items))
            out.append((b.at, put / dt, got / dt))
        return out

    def recent_rates(self, span_s: float) -> tuple[float, float]:
        """Put and got per second averaged over the last `span_s` (0, 0 without samples)."""
        if not self.points:
            return 0.0, 0.0
        end = self.points[-1].at
        rates = [(t, p, g) for t, p, g in self.rates() if t > end - span_s]
        if not rates:
            return 0.0, 0.0
        return sum(r[1] for r in rates) / len(rates), sum(r[2] for r in rates) / len(rates)


def _growth(before: int, after: int) -> int:
    # A counter that went back was reset (a restart): what it holds now is what came since.
    return after - before if after >= before else after


class Restarts:
    """Restarts seen per process (rule 3): a changed start time is one more."""

    def __init__(self) -> None:
        self._start: dict[tuple[str, str], int] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def seen(self, where: str, name: str, start: int) -> int:
        key = (where, name)
        before = self._start.get(key)
        if before is not None and start and start != before:
            self.counts[key] = self.counts.get(key, 0) + 1
        if start:
            self._start[key] = start
        return self.counts.get(key, 0)


# -- what a sample holds ---------------------------------------------------------------------


@dataclass(slots=True)
class QueueRow:
    server: str
    name: str
    items: int
    bytes: int
    open_reads: int
    waiters: int
    age_ms: int
    total_items: int
    dead_lettered: int
    put_rate: float = 0.0
    got_rate: float = 0.0
    depth_line: list[tuple[float, float]] = field(default_factory=list)
    rate_lines: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass(slots=True)
class DeadLetters:
    server: str
    name: str
    target: str
    items: int
    head: str  # the head message, decoded for display and cut at PEEK_BYTES
    head_bytes: int
    head_digest: str


@dataclass(slots=True)
class ServerStatus:
    name: str
    up: bool
    error: str = ""
    note: str = ""  # up, but something was refused (a QUIESCENT server's peeks)
    version: str = ""
    uptime_s: int = 0
    connections: int = 0


@dataclass(slots=True)
class ProcessRow:
    supervisor: str
    name: str
    state: str
    pid: int
    uptime_s: int
    restarts: int
    description: str


@dataclass(slots=True)
class SupervisorStatus:
    name: str
    up: bool
    error: str = ""


@dataclass(slots=True)
class Snapshot:
    at: float = 0.0
    servers: list[ServerStatus] = field(default_factory=list)
    queues: list[QueueRow] = field(default_factory=list)
    dead: list[DeadLetters] = field(default_factory=list)
    supervisors: list[SupervisorStatus] = field(default_factory=list)
    processes: list[ProcessRow] = field(default_factory=list)


# -- asking the servers and supervisords -----------------------------------------------------


@dataclass(slots=True)
class _ServerAnswer:
    status: ServerStatus
    queues: dict[str, dict[str, str]] = field(default_factory=dict)
    heads: dict[str, bytes | None] = field(default_factory=dict)


class _TimeoutTransport(xmlrpc.client.Transport):
    """xmlrpc.client's transport with a socket timeout (it has none of its own)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = self.timeout_s
        return conn


def ask_supervisor(
    address: Address, password: str, timeout_s: float, user: str = "kestrelq"
) -> list[dict[str, Any]]:
    """supervisord's `getAllProcessInfo` at `address` (OSError, Fault or ProtocolError if not)."""
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    # Quoted: xmlrpc.client unquotes the user part, and a password may hold `@` or `/`.
    login = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    url = f"http://{login}@{host}:{address[1]}/RPC2"
    with xmlrpc.client.ServerProxy(url, transport=_TimeoutTransport(timeout_s)) as proxy:
        infos = proxy.supervisor.getAllProcessInfo()
    if not isinstance(infos, list):
        raise xmlrpc.client.ProtocolError(url, 0, "getAllProcessInfo gave no list", {})
    return [dict(info) for info in infos if isinstance(info, dict)]


class Collector:
    """Samples every `interval_s` in a thread of its own (rule 1); `snapshot` is the last one."""

    def __init__(
        self,
        servers: ServerList,
        credentials: Credentials,
        *,
        supervisors: Sequence[Entry] = (),
        supervisor_password: str = "",
        dead_letters: Mapping[str, str] | None = None,
        interval_s: float = 2.0,
        window_s: float = 600.0,
        timeout_s: float = 2.0,
        action_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.servers = servers
        self.credentials = credentials
        self.supervisors = ServerList(supervisors) if supervisors else None
        self.supervisor_password = supervisor_password
        self.dead_letters = dict(dead_letters or {})
        self.interval_s = interval_s
        self.window_s = window_s
        self.timeout_s = timeout_s
        # A click's requeue or drop is waited for by the user, not by the page's updates: a
        # server slow for a moment must not cut a move short (timeout_s if not given).
        self.action_timeout_s = action_timeout_s or timeout_s
        self.clock = clock
        self.started_at = clock()
        self.snapshot = Snapshot()
        self._history: dict[tuple[str, str], History] = {}
        self._restarts = Restarts()
        self._lock = threading.Lock()  # one sample at a time: history is not shared safely
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dashboard-sample")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dashboard-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # the page must keep showing the last sample, not die
                logger.exception("dashboard sample failed")
            self._stop.wait(self.interval_s)

    def client(self, address: Address, timeout_s: float | None = None) -> Client:
        return Client(address[0], address[1], timeout_s or self.timeout_s, self.credentials)

    def sample(self) -> Snapshot:
        """Ask everyone now (at most about `timeout_s` per connection); the new snapshot."""
        with self._lock:
            addresses = self.servers.addresses()
            supervisors = self.supervisors.addresses() if self.supervisors else []
            server_jobs = [self._pool.submit(self._ask_server, a) for a in addresses]
            supervisor_jobs = [self._pool.submit(self._ask_supervisor, a) for a in supervisors]
            answers = [job.result() for job in server_jobs]
            supervised = [job.result() for job in supervisor_jobs]
            now = self.clock()
            snap = Snapshot(at=now)
            for address, answer in zip(addresses, answers, strict=True):
                snap.servers.append(answer.status)
                self._add_queues(snap, server_name(address), answer, now)
            self._forget_gone_queues(snap)
            for address, (status, infos) in zip(supervisors, supervised, strict=True):
                snap.supervisors.append(status)
                snap.processes += self._processes(server_name(address), infos)
            self.snapshot = snap
            return snap

    def _ask_server(self, address: Address) -> _ServerAnswer:
        name = server_name(address)
        try:
            with self.client(address) as client:
                stats = client.stats()
                queues = client.dump_stats()
                heads, note = self._peek_dead_letters(client, queues)
        except (OSError, KestrelqError) as exc:
            return _ServerAnswer(ServerStatus(name, False, str(exc) or type(exc).__name__))
        status = ServerStatus(
            name,
            True,
            note=note,
            version=stats.get("version", ""),
            uptime_s=_int(stats.get("uptime", "0")),
            connections=_int(stats.get("curr_connections", "0")),
        )
        return _ServerAnswer(status, queues, heads)

    def _peek_dead_letters(
        self, client: Client, queues: Mapping[str, object]
    ) -> tuple[dict[str, bytes | None], str]:
        """The head of each dead-letter queue, and a note if the server's status refused it."""
        heads: dict[str, bytes | None] = {}
        for queue in queues:
            if dead_letter_target(queue, self.dead_letters) is None:
                continue
            try:
                item = client.get(f"{queue}/peek")
            except ReplyError as exc:
                if exc.reason not in STATUS_REFUSALS:
                    raise
                # The server answered stats and dump_stats, so it is up; it closed the
                # connection with the refusal, so no further peek can be asked on it.
                return heads, f"{exc.reason}: dead letters' heads not shown"
            heads[queue] = None if item is None else item.data
        return heads, ""

    def _ask_supervisor(self, address: Address) -> tuple[SupervisorStatus, list[dict[str, Any]]]:
        name = server_name(address)
        try:
            infos = ask_supervisor(address, self.supervisor_password, self.timeout_s)
        except xmlrpc.client.ProtocolError as exc:
            why = "wrong password" if exc.errcode == 401 else f"HTTP {exc.errcode}"
            return SupervisorStatus(name, False, why), []
        except (TimeoutError, OSError, xmlrpc.client.Error) as exc:
            return SupervisorStatus(name, False, str(exc) or type(exc).__name__), []
        return SupervisorStatus(name, True), infos

    def _add_queues(self, snap: Snapshot, server: str, answer: _ServerAnswer, now: float) -> None:
        for queue, stats in sorted(answer.queues.items()):
            items = _int(stats.get("items", "0"))
            total = _int(stats.get("total_items", "0"))
            got = _int(stats["got_items"]) if "got_items" in stats else None
            history = self._history.setdefault((server, queue), History(self.window_s))
            history.add(now, items, total, got)
            put, got_rate = history.recent_rates(60.0)
            snap.queues.append(
                QueueRow(
                    server=server,
                    name=queue,
                    items=items,
                    bytes=_int(stats.get("bytes", "0")),
                    open_reads=_int(stats.get("open_transactions", "0")),
                    waiters=_int(stats.get("waiters", "0")),
                    age_ms=_oldest_age_ms(stats),
                    total_items=total,
                    dead_lettered=_int(stats.get("dead_lettered", "0")),
                    put_rate=put,
                    got_rate=got_rate,
                    depth_line=[(p.at, float(p.items)) for p in history.points],
                    rate_lines=history.rates(),
                )
            )
            target = dead_letter_target(queue, self.dead_letters)
            if target is not None:
                head = answer.heads.get(queue)
                snap.dead.append(
                    DeadLetters(
                        server=server,
                        name=queue,
                        target=target,
                        items=items,
                        head="" if head is None else head[:PEEK_BYTES].decode(errors="replace"),
                        head_bytes=0 if head is None else len(head),
                        head_digest="" if head is None else digest(head),
                    )
                )

    def _forget_gone_queues(self, snap: Snapshot) -> None:
        # Rule 2: only what this sample shows, and what the servers that did not answer had.
        shown = {(q.server, q.name) for q in snap.queues}
        silent = {s.name for s in snap.servers if not s.up}
        for key in [k for k in self._history if k not in shown and k[0] not in silent]:
            del self._history[key]

    def _processes(self, where: str, infos: list[dict[str, Any]]) -> list[ProcessRow]:
        rows: list[ProcessRow] = []
        for info in infos:
            group, name = str(info.get("group", "")), str(info.get("name", ""))
            full = name if group in ("", name) else f"{group}:{name}"
            start, now = int(info.get("start", 0)), int(info.get("now", 0))
            state = str(info.get("statename", "UNKNOWN"))
            rows.append(
                ProcessRow(
                    supervisor=where,
                    name=full,
                    state=state,
                    pid=int(info.get("pid", 0)),
                    uptime_s=max(0, now - start) if state == "RUNNING" and start else 0,
                    restarts=self._restarts.seen(where, full, start),
                    description=str(info.get("spawnerr") or info.get("description", "")),
                )
            )
        return rows


def _oldest_age_ms(stats: Mapping[str, str]) -> int:
    # `oldest_age_ms`: how long the head item has waited; a server without it has only
    # Kestrel's `age` (how long the last fetched item had waited), the nearest there is.
    for key in ("oldest_age_ms", "age"):
        if key in stats:
            return _int(stats[key])
    return 0


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
