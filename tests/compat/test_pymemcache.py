"""pymemcache, unmodified, against a real server: what users of that client will do.

The points where we differ from Kestrel on purpose are the ones pymemcache needs: the VALUE
line echoes the key it asked for (it checks), flags come back (its serde relies on them), and
`noreply` is honoured (its `set` sends it by default).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import ServerProcess
from pymemcache import serde
from pymemcache.client.base import Client

from kestrelq import WIRE_VERSION, __version__


def client(server: ServerProcess, **kwargs: Any) -> Client:
    return Client(("127.0.0.1", server.port), timeout=10, connect_timeout=5, **kwargs)


def test_set_get_delete(server: ServerProcess) -> None:
    c = client(server)
    try:
        assert c.set("jobs", b"one", noreply=False) is True
        assert c.set("jobs", b"two", noreply=False) is True
        assert c.get("jobs") == b"one"
        assert c.get("jobs") == b"two"
        assert c.get("jobs") is None
        assert c.set("jobs", b"three", noreply=False) is True
        assert c.delete("jobs", noreply=False) is True
        assert c.get("jobs") is None
    finally:
        c.close()


def test_version_and_stats(server: ServerProcess) -> None:
    c = client(server)
    try:
        assert c.version() == WIRE_VERSION.encode()
        c.set("work", b"12345", noreply=False)
        stats = c.stats()
        assert stats[b"version"] == __version__.encode()
        assert stats[b"curr_items"] == 1
        assert int(stats[b"queue_work_items"]) == 1
        assert int(stats[b"queue_work_bytes"]) == 5
    finally:
        c.close()


@pytest.mark.parametrize(
    "key", ["q/close/open/t=100", "q/open", "q/t=100/open", "q/peek", "q/t=100"]
)
def test_get_with_options_echoes_the_key(server: ServerProcess, key: str) -> None:
    c = client(server)
    try:
        assert c.set("q", b"payload", noreply=False) is True
        # pymemcache matches the VALUE line against the key it sent; a bare `VALUE q` would
        # make it raise and drop the connection.
        assert c.get(key) == b"payload"
        assert c.version() == WIRE_VERSION.encode()  # still in step
    finally:
        c.close()


def test_reliable_read_loop(server: ServerProcess) -> None:
    producer, worker = client(server), client(server)
    try:
        for i in range(10):
            assert producer.set("tasks", b"task-%d" % i, noreply=False) is True
        got = []
        for _ in range(20):
            data = worker.get("tasks/close/open/t=100")
            if data is None:
                break
            got.append(data)
        assert got == [b"task-%d" % i for i in range(10)]
        assert worker.get("tasks/close") is None
        assert int(producer.stats()[b"queue_tasks_open_transactions"]) == 0
    finally:
        producer.close()
        worker.close()


def test_blocking_get_times_out_with_none(server: ServerProcess) -> None:
    c = client(server)
    try:
        started = time.monotonic()
        assert c.get("empty/t=300/open") is None
        assert 0.298 <= time.monotonic() - started < 2.3
    finally:
        c.close()


@pytest.mark.parametrize(
    "obj",
    [b"raw bytes", "text \u00e9", 42, 2**70, {"task": "resize", "args": [1, 2]}, [1.5, None]],
    ids=["bytes", "str", "int", "long", "dict", "list"],
)
def test_flags_round_trip_with_a_serde(server: ServerProcess, obj: object) -> None:
    c = client(server, serde=serde.pickle_serde)
    try:
        assert c.set("typed", obj, noreply=False) is True
        got = c.get("typed/open")
        assert got == obj and type(got) is type(obj)
        assert c.get("typed/close") is None
    finally:
        c.close()


def test_compressed_serde_round_trip(server: ServerProcess) -> None:
    c = client(server, serde=serde.compressed_serde)
    try:
        big = {"blob": "x" * 10_000}
        assert c.set("zipped", big, noreply=False) is True
        assert c.get("zipped") == big
    finally:
        c.close()


def test_default_noreply_set_stays_in_step(server: ServerProcess) -> None:
    c = client(server)  # pymemcache's set sends `noreply` unless told otherwise
    try:
        for i in range(200):
            assert c.set("quiet", b"%d" % i) is True
        # A server that answered the noreply sets would feed those STOREDs to these calls.
        assert c.version() == WIRE_VERSION.encode()
        assert [c.get("quiet") for _ in range(200)] == [b"%d" % i for i in range(200)]
        assert c.get("quiet") is None
    finally:
        c.close()


def test_refused_set_returns_false(tmp_path: Any) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[queues.full]\nmax_items = 1\n")
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    c = client(srv)
    try:
        assert c.set("full", b"a", noreply=False) is True
        assert c.set("full", b"b", noreply=False) is False
        assert c.get("full") == b"a"
    finally:
        c.close()
        assert srv.stop() == 0


def test_expire_argument_is_honoured(server: ServerProcess) -> None:
    c = client(server)
    try:
        assert c.set("exp", b"gone", expire=-1, noreply=False) is True
        assert c.set("exp", b"kept", expire=3600, noreply=False) is True
        assert c.get("exp") == b"kept"
    finally:
        c.close()


def test_concurrent_clients_each_item_exactly_once(server: ServerProcess) -> None:
    # One Client per thread (never shared), as one per worker process in production.
    per_producer = 300
    produced = threading.Event()

    def produce(p: int) -> None:
        c = client(server)
        try:
            for n in range(per_producer):
                assert c.set("shared", b"%d:%d" % (p, n), noreply=False) is True
        finally:
            c.close()

    def consume() -> list[bytes]:
        c = client(server)
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                # Read the flag first: a miss after it was set means the queue is drained.
                done = produced.is_set()
                data = c.get("shared/close/open/t=200")
                if data is not None:
                    got.append(data)
                elif done:
                    return got
            raise TimeoutError("the queue did not drain")
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        consumers = [pool.submit(consume) for _ in range(3)]
        producers = [pool.submit(produce, p) for p in range(5)]
        for done in producers:
            done.result(timeout=60)
        produced.set()
        shares = [f.result(timeout=60) for f in consumers]
    received = [item for share in shares for item in share]
    expected = {b"%d:%d" % (p, n) for p in range(5) for n in range(per_producer)}
    assert len(received) == len(expected)
    assert set(received) == expected
    # FIFO per producer within each consumer's share.
    for share in shares:
        for p in range(5):
            mine = [int(x.split(b":")[1]) for x in share if x.startswith(b"%d:" % p)]
            assert mine == sorted(mine)
