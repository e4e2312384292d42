"""One blocking client per server kind, all driven by the same loop in bench.runner.

A driver puts a message and takes one back. Queue servers hand out whatever is at the head;
memcached, a cache, is read back by key, which is its ceiling for the same client library.
Two clients speak memcache: pymemcache (what users run) and the minimal client
(bench/miniclient.py, the least a Python client costs), the same for every memcache server.
"""

from __future__ import annotations

from typing import Protocol

from bench import miniclient
from bench.beanstalk import Beanstalk
from bench.servers import HOST

QUEUE = "bench"
PROCESSING = "bench:processing"
ID_WIDTH = 12
MIN_SIZE = ID_WIDTH + 1

# (kind, mode) pairs the harness knows. "kv" is memcached's set/get of distinct keys.
TARGETS: tuple[tuple[str, str], ...] = (
    ("kestrelq", "plain"),
    ("kestrelq", "reliable"),
    ("memcached", "kv"),
    ("beanstalkd", "reliable"),
    ("redis", "plain"),
    ("redis", "reliable"),
    ("pyfloor", "plain"),
    ("darner", "plain"),
    ("darner", "reliable"),
    ("darner-sync", "plain"),
    ("darner-sync", "reliable"),
)

# The client libraries a run can use. The minimal client speaks only memcache, and darner
# only runs with it: pymemcache cannot read darner's replies.
CLIENTS = ("pymemcache", "minimal")
MEMCACHE_KINDS = ("kestrelq", "memcached", "pyfloor", "darner", "darner-sync")
DARNER_KINDS = ("darner", "darner-sync")

OP_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("kestrelq", "plain"): ("set", "get q"),
    ("kestrelq", "reliable"): ("set", "get q/close/open"),
    ("memcached", "kv"): ("set", "get key"),
    ("beanstalkd", "reliable"): ("put", "reserve+delete"),
    ("redis", "plain"): ("LPUSH", "RPOP"),
    ("redis", "reliable"): ("LPUSH", "LMOVE+LREM"),
    ("pyfloor", "plain"): ("set", "get q"),
    ("darner", "plain"): ("set", "get q"),
    ("darner", "reliable"): ("set", "get q/close/open"),
    ("darner-sync", "plain"): ("set q/sync", "get q"),
    ("darner-sync", "reliable"): ("set q/sync", "get q/close/open"),
}


def runs_with(kind: str, client: str) -> bool:
    """Whether the harness runs server `kind` with `client` (pymemcache or minimal)."""
    if client == "minimal":
        return kind in MEMCACHE_KINDS
    return kind not in DARNER_KINDS


def make_payload(msg_id: int, size: int) -> bytes:
    """The message body: its id in ASCII, then filler, so content can be checked on return."""
    head = b"%0*d:" % (ID_WIDTH, msg_id)
    return head + b"x" * (size - len(head))


def parse_id(data: bytes) -> int:
    return int(data[:ID_WIDTH])


class Driver(Protocol):
    def put(self, msg_id: int, payload: bytes) -> None: ...

    def take(self, msg_id: int) -> bytes | None:
        """The next message (queues ignore msg_id; memcached reads that key) or None."""
        ...

    def close(self) -> None: ...


class DriverError(RuntimeError):
    pass


class MemcacheQueueDriver:
    """kestrelq through pymemcache: `set q`, then `get q` or `get q/close/open`."""

    def __init__(self, port: int, reliable: bool, queue: str = QUEUE) -> None:
        from kestrelq.credentials import Credentials, memcache_client

        # Login and TLS as every client of ours (KESTRELQ_USER, KESTRELQ_TLS_CA, ...; none
        # set: plain): bench.security sets them to measure what they cost.
        self._client = memcache_client(
            (HOST, port), Credentials.from_env(), timeout=30, connect_timeout=10,
            no_delay=True, default_noreply=False,
        )  # fmt: skip
        self._queue = queue
        self._get_key = f"{queue}/close/open" if reliable else queue

    def put(self, msg_id: int, payload: bytes) -> None:
        if not self._client.set(self._queue, payload, noreply=False):
            raise DriverError(f"set of message {msg_id} was not STORED")

    def take(self, msg_id: int) -> bytes | None:
        value: bytes | None = self._client.get(self._get_key)
        return value

    def close(self) -> None:
        self._client.close()


class MemcachedDriver:
    """memcached through the same pymemcache client: set and get of one key per message."""

    def __init__(self, port: int) -> None:
        from pymemcache.client.base import Client

        self._client = Client(
            (HOST, port), timeout=30, connect_timeout=10, no_delay=True, default_noreply=False
        )

    def put(self, msg_id: int, payload: bytes) -> None:
        if not self._client.set(f"k{msg_id}", payload, noreply=False):
            raise DriverError(f"set of key k{msg_id} was not STORED")

    def take(self, msg_id: int) -> bytes | None:
        value: bytes | None = self._client.get(f"k{msg_id}")
        return value

    def close(self) -> None:
        self._client.close()


class BeanstalkDriver:
    def __init__(self, port: int) -> None:
        self._client = Beanstalk(HOST, port)

    def put(self, msg_id: int, payload: bytes) -> None:
        self._client.put(payload)

    def take(self, msg_id: int) -> bytes | None:
        job = self._client.reserve(0)
        if job is None:
            return None
        job_id, body = job
        self._client.delete(job_id)
        return body

    def close(self) -> None:
        self._client.close()


class RedisDriver:
    """LPUSH/RPOP, or the reliable-queue pattern: LMOVE to a processing list, then LREM."""

    def __init__(self, port: int, reliable: bool) -> None:
        import redis

        self._client = redis.Redis(host=HOST, port=port, socket_timeout=30)
        self._reliable = reliable

    def put(self, msg_id: int, payload: bytes) -> None:
        self._client.lpush(QUEUE, payload)

    def take(self, msg_id: int) -> bytes | None:
        if not self._reliable:
            value: bytes | None = self._client.rpop(QUEUE)  # type: ignore[assignment]
            return value
        moved: bytes | None = self._client.lmove(QUEUE, PROCESSING, "RIGHT", "LEFT")  # type: ignore[assignment]
        if moved is not None:
            self._client.lrem(PROCESSING, 1, moved)  # type: ignore[arg-type]
        return moved

    def close(self) -> None:
        self._client.close()


class MiniDriver:
    """Any memcache server through the minimal client: the same bytes on the wire for all.

    memcached is read back by key; darner-sync sets `q/sync`, which darner fsyncs before
    STORED; the queues take `q/close/open` (reliable) or `q` (plain).
    """

    def __init__(self, kind: str, port: int, reliable: bool, queue: str = QUEUE) -> None:
        self._client = miniclient.connect(HOST, port)
        self._keyed = kind == "memcached"
        self._set_key = (queue + "/sync" if kind == "darner-sync" else queue).encode()
        self._get_key = (queue + "/close/open" if reliable else queue).encode()

    def put(self, msg_id: int, payload: bytes) -> None:
        self._client.set(b"k%d" % msg_id if self._keyed else self._set_key, payload)

    def take(self, msg_id: int) -> bytes | None:
        return self._client.get(b"k%d" % msg_id if self._keyed else self._get_key)

    def close(self) -> None:
        self._client.close()


def connect(kind: str, mode: str, port: int, client: str = "pymemcache") -> Driver:
    if not runs_with(kind, client):
        raise ValueError(f"{kind} does not run with the {client} client")
    if client == "minimal":
        return MiniDriver(kind, port, reliable=mode == "reliable")
    if kind in ("kestrelq", "pyfloor"):
        return MemcacheQueueDriver(port, reliable=mode == "reliable")
    if kind == "memcached":
        return MemcachedDriver(port)
    if kind == "beanstalkd":
        return BeanstalkDriver(port)
    if kind == "redis":
        return RedisDriver(port, reliable=mode == "reliable")
    raise ValueError(f"unknown server kind {kind!r}")
