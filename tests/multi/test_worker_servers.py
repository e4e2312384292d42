"""A worker reading from several real servers: each server drained, none starved, a dead one
skipped and returned to, every confirm on the connection that opened the read."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import ServerProcess, child_env, free_port, put_all, wait_until

from kestrelq.client import Client
from kestrelq.worker.runtime import RUN_MAX, Worker


def addresses(ports: list[int]) -> list[tuple[str, int]]:
    return [("127.0.0.1", port) for port in ports]


def queue_stats(port: int, queue: str) -> dict[str, str]:
    with Client("127.0.0.1", port, timeout=10) as client:
        return client.dump_stats(queue).get(queue, {})


def make_worker(ports: list[int], handled: list[bytes], **opts: object) -> Worker:
    return Worker(
        "work",
        handled.append,
        servers=addresses(ports),
        handle_signals=False,
        wait_ms=200,
        name="multi",
        **opts,  # type: ignore[arg-type]
    )


def test_items_on_one_of_three_servers_are_all_handled_and_confirmed_there(
    three: list[ServerProcess],
) -> None:
    items = [b"only-on-the-middle-%d" % i for i in range(50)]
    put_all(three[1].port, "work", items)
    handled: list[bytes] = []
    worker = make_worker([s.port for s in three], handled, burst=True)
    assert worker.run() == 0
    assert handled == items, "each handled once, in the server's order"
    assert worker.counts.redelivered == 0
    for server in three:
        stats = queue_stats(server.port, "work")
        # Confirmed on the connection that opened each read: nothing open, nothing left.
        assert stats.get("items", "0") == "0"
        assert stats.get("open_transactions", "0") == "0"
    assert queue_stats(three[1].port, "work")["total_items"] == "50"


def test_a_busy_server_does_not_starve_the_others(three: list[ServerProcess]) -> None:
    busy = [b"busy-%d" % i for i in range(6 * RUN_MAX)]
    few = [b"few-%d" % i for i in range(3)]
    put_all(three[0].port, "work", busy)
    put_all(three[2].port, "work", few)
    handled: list[bytes] = []
    assert make_worker([s.port for s in three], handled, burst=True).run() == 0
    assert sorted(handled) == sorted(busy + few)
    # From whichever server it starts, the worker takes at most RUN_MAX from the busy one
    # before it visits the others (no timing involved: everything was queued first).
    last_few = max(handled.index(m) for m in few)
    assert last_few < 2 * RUN_MAX + len(few), handled[: last_few + 1]


def test_a_dead_server_delays_nothing_and_is_read_again_when_it_returns(
    tmp_path: Path, three: list[ServerProcess]
) -> None:
    dead = ServerProcess(tmp_path / "data-dead", port=free_port())
    ports = [three[0].port, dead.port, three[2].port]
    handled: list[bytes] = []
    worker = make_worker(ports, handled, backoff_max_s=0.5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        first = [b"a%d" % i for i in range(20)]
        put_all(three[0].port, "work", first[:10])
        put_all(three[2].port, "work", first[10:])
        wait_until(lambda: len(handled) == 20, 60, what="items on the live servers handled")
        assert sorted(handled) == sorted(first)
        # The dead server comes up with items of its own: the worker goes back to it.
        dead.start()
        put_all(dead.port, "work", [b"late-%d" % i for i in range(5)])
        wait_until(lambda: len(handled) == 25, 60, what="items on the returned server handled")
        assert queue_stats(dead.port, "work").get("items") == "0"
    finally:
        worker.request_stop()
        thread.join(30)
        if dead.proc is not None:
            dead.stop()
    assert not thread.is_alive()
    assert sorted(handled[20:]) == [b"late-%d" % i for i in range(5)]
    assert worker.counts.reconnects >= 1


def test_kestrelq_work_with_a_server_list_drains_every_server(
    tmp_path: Path, three: list[ServerProcess]
) -> None:
    for n, server in enumerate(three):
        put_all(server.port, "work", [b"s%d-%d" % (n, i) for i in range(4)])
    (tmp_path / "rec.py").write_text(
        "import os\n"
        "def handle(data):\n"
        "    with open(os.environ['REC'], 'ab') as f:\n"
        "        f.write(data + b'\\n')\n"
    )
    listing = ",".join(f"127.0.0.1:{s.port}" for s in three)
    result = subprocess.run(
        [sys.executable, "-m", "kestrelq", "work", "work", "--handler", "rec:handle",
         "--servers", listing, "--burst", "--wait-ms", "100"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env=child_env(REC=str(tmp_path / "rec.out")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"at {listing} (wait 100 ms" in result.stderr
    got = sorted((tmp_path / "rec.out").read_bytes().split())
    assert got == sorted(b"s%d-%d" % (n, i) for n in range(3) for i in range(4))


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--servers", "a:1,b:2", "--host", "c"], {}, id="options"),
        pytest.param([], {"KESTRELQ_SERVERS": "a:1", "KESTRELQ_PORT": "2"}, id="environment"),
    ],
)
def test_kestrelq_work_refuses_a_list_and_a_host_together(
    args: list[str], env: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kestrelq", "work", "work", "--handler", "json:loads", *args],
        capture_output=True, text=True, timeout=60, check=False, env=child_env(**env),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "not both" in result.stderr
