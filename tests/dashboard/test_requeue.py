"""`kestrelq requeue` and its library function against real server processes: every item
moved in order with its flags, --max over several servers, a refusing destination, and
kill -9 in the middle of a move, which loses nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, child_env, serving, wait_until

from kestrelq.client import Client
from kestrelq.credentials import Credentials
from kestrelq.requeue import requeue


def kestrelq(*args: str) -> list[str]:
    return [sys.executable, "-m", "kestrelq", *args]


def fill(port: int, queue: str, bodies: list[bytes], flags: int = 0) -> None:
    with Client("127.0.0.1", port) as client:
        for body in bodies:
            assert client.set(queue, body, flags)


def drain(port: int, queue: str) -> list[bytes]:
    out = []
    with Client("127.0.0.1", port) as client:
        while (item := client.get(queue)) is not None:
            out.append(item.data)
    return out


def depth(port: int, queue: str) -> int:
    with Client("127.0.0.1", port) as client:
        return int(client.dump_stats(queue).get(queue, {}).get("items", "0"))


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with serving(tmp_path / "a") as a, serving(tmp_path / "b") as b:
        yield a, b


def test_the_cli_moves_every_item_in_order_with_its_flags(server: ServerProcess) -> None:
    bodies = [f"dead letter {n}".encode() for n in range(10)]
    fill(server.port, "work_dead", bodies, flags=7)
    done = subprocess.run(
        kestrelq("requeue", "work_dead", "work", "--port", str(server.port)),
        capture_output=True, text=True, timeout=60, env=child_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"127.0.0.1:{server.port}: moved 10 from work_dead to work" in done.stdout
    assert depth(server.port, "work_dead") == 0
    with Client("127.0.0.1", server.port) as client:
        moved = [client.get("work") for _ in bodies]
        assert client.get("work") is None
    assert [(v.data, v.flags) for v in moved if v] == [(b, 7) for b in bodies]


def test_a_host_option_takes_its_port_from_the_environment(server: ServerProcess) -> None:
    # As the options' help says, and as `kestrelq work` and `kestrelq stats` do.
    fill(server.port, "env_dead", [b"one"])
    done = subprocess.run(
        kestrelq("requeue", "env_dead", "env", "--host", "127.0.0.1", "--timeout", "5"),
        capture_output=True, text=True, timeout=60, check=False,
        env=child_env(KESTRELQ_PORT=str(server.port)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"127.0.0.1:{server.port}: moved 1 from env_dead to env" in done.stdout
    assert drain(server.port, "env") == [b"one"]


def test_max_counts_over_every_server(two: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two
    for srv in two:
        fill(srv.port, "jobs_dead", [b"x1", b"x2", b"x3"])
    servers = [("127.0.0.1", a.port), ("127.0.0.1", b.port)]
    result = requeue("jobs_dead", "jobs", servers=servers, credentials=Credentials(), max_items=4)
    assert (result.moved, result.errors) == (4, [])
    assert [s.moved for s in result.servers] == [3, 1]
    assert (depth(a.port, "jobs"), depth(b.port, "jobs")) == (3, 1)
    assert (depth(a.port, "jobs_dead"), depth(b.port, "jobs_dead")) == (0, 2)
    # Each server's items stayed on it.
    assert drain(b.port, "jobs") == [b"x1"]


def test_a_server_that_is_down_is_reported_and_the_others_moved(
    two: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two
    fill(b.port, "jobs_dead", [b"y"])
    assert a.stop() == 0
    done = subprocess.run(
        kestrelq("requeue", "jobs_dead", "jobs", "--servers",
                 f"127.0.0.1:{a.port},127.0.0.1:{b.port}", "--timeout", "2"),
        capture_output=True, text=True, timeout=60, env=child_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"127.0.0.1:{a.port}:" in done.stderr and "moved 1 in all" in done.stdout
    assert drain(b.port, "jobs") == [b"y"]


def test_a_destination_that_refuses_keeps_the_item_in_the_source(tmp_path: Path) -> None:
    config = "[queues.full]\nmax_items = 1\n"
    with serving(tmp_path / "data", config=config) as srv:
        fill(srv.port, "full", [b"already there"])
        fill(srv.port, "full_dead", [b"d1", b"d2"])
        result = requeue("full_dead", "full", servers=[("127.0.0.1", srv.port)])
        assert result.moved == 0
        assert "NOT_STORED" in result.errors[0]
        # Given back at the head, in order, and no read left open.
        assert drain(srv.port, "full_dead") == [b"d1", b"d2"]
        with Client("127.0.0.1", srv.port) as client:
            assert client.dump_stats("full_dead")["full_dead"]["open_transactions"] == "0"


def test_requeue_to_itself_is_refused(server: ServerProcess) -> None:
    done = subprocess.run(
        kestrelq("requeue", "work", "work", "--port", str(server.port)),
        capture_output=True, text=True, timeout=60, env=child_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "to itself" in done.stderr


def test_kill_9_half_way_loses_nothing(server: ServerProcess) -> None:
    total = 3000
    bodies = [f"item {n:05d}".encode() for n in range(total)]
    with Client("127.0.0.1", server.port) as client:
        from kestrelq.protocol.commands import Set

        client.pipeline([Set("src", 0, 0, b) for b in bodies])
    assert depth(server.port, "src") == total
    mover = subprocess.Popen(
        kestrelq("requeue", "src", "dest", "--port", str(server.port)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
    )  # fmt: skip
    assert server.proc is not None
    try:
        wait_until(lambda: depth(server.port, "dest") >= 1, 60, what="the first moved item")
        # The server frozen, the mover cannot take another step: it is killed in the middle
        # of one (waiting for a get, a set or a confirm), wherever that is.
        server.proc.send_signal(signal.SIGSTOP)
        mover.send_signal(signal.SIGKILL)
        mover.wait(30)
    finally:
        server.proc.send_signal(signal.SIGCONT)
        if mover.poll() is None:
            mover.kill()
            mover.wait(30)
    # Its open read went back when its connection closed.
    wait_until(
        lambda: depth(server.port, "src") + depth(server.port, "dest") >= total, 60,
        what="the killed mover's open read back in src",
    )  # fmt: skip
    left, moved = drain(server.port, "src"), drain(server.port, "dest")
    assert left and moved, "the move was not cut in the middle"
    seen = Counter(left + moved)
    assert set(seen) == set(bodies), "an item was lost"
    assert sum(seen.values()) - total <= 1, "more than the one item in flight is doubled"
    # Order kept on both sides: the head of src follows the tail of dest.
    assert moved == sorted(moved) and left == sorted(left)
