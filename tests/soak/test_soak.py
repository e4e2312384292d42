"""The soak: well-behaved producers and workers beside misbehaving clients, for a bounded time.

`make soak` runs it for five minutes (KESTRELQ_SOAK_SECONDS=300) and prints the report; the
default test run does a short pass. What it asserts does not depend on the machine's speed:
every acknowledged message is delivered, and the server's memory and descriptors stay under
bounds set by its own limits, whatever the misbehaving clients do.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess
from soak_clients import Soak

SECONDS = float(os.environ.get("KESTRELQ_SOAK_SECONDS", "15"))
MAX_CONNECTIONS = 128
MAX_ITEM_BYTES = 4 << 20
# What the misbehaving clients may hold at most, beyond a server at rest: every connection at
# its largest unfinished item would be 512 MiB without a server-wide budget.
RSS_CEILING_BYTES = 256 << 20
# The descriptor limit most systems give a service. The flooders make far more queues than
# that; the server must keep the files it holds open under it with room for every connection.
SERVER_NOFILE = 1024

MISBEHAVERS = {
    "slow_sender": 8,
    "non_reader": 4,
    "garbage": 2,
    "huge": 6,
    "queue_flood": 2,
    "idle_holder": 8,
}


@pytest.fixture
def soak_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path / "data",
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--max-item-bytes",
        str(MAX_ITEM_BYTES),
        env={
            # A command started and not finished, or a connection silent, this long is closed.
            "KESTRELQ_READ_TIMEOUT_S": "2",
            "KESTRELQ_IDLE_TIMEOUT_S": "5",
            "KESTRELQ_MAX_QUEUES": "2000",
            "KESTRELQ_MAX_PENDING_BYTES": str(32 << 20),
            "KESTRELQ_FSYNC": "never",
        },
    )
    # The child inherits the limit; this process gets its own back at once.
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, limits[1]))
    try:
        server.start(wait=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    server.wait_ready()
    yield server
    assert server.stop(timeout_s=60) == 0, server.log()[-4000:]


def test_soak_loses_nothing_and_stays_bounded(soak_server: ServerProcess) -> None:
    assert soak_server.proc is not None
    pid = soak_server.proc.pid
    soak = Soak(soak_server.port, pid, SECONDS, max_item_bytes=MAX_ITEM_BYTES)

    report = soak.run(MISBEHAVERS)
    print("\n" + report.summary())

    assert report.acknowledged, "no well-behaved set was acknowledged"
    assert not report.lost, f"{len(report.lost)} acknowledged ids never delivered"
    assert max(report.rss_bytes) < RSS_CEILING_BYTES, report.summary()
    # Never out of descriptors: at the limit, accept() would have turned clients away.
    assert max(report.fds) < SERVER_NOFILE, report.summary()
    assert "out of file descriptors" not in soak_server.log()
    # And a newcomer still gets in and is served once the storm has passed.
    newcomer = soak_server.client()
    try:
        assert newcomer.version()
    finally:
        newcomer.close()
    # Every kind of misbehaviour really ran against the server.
    for name in MISBEHAVERS:
        assert report.misbehaving[name].connections > 0, name
