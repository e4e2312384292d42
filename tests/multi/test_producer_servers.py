"""Producers over several real servers: an exact spread, and failover with nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, ServerProcess, child_env, drain, free_port, wait_until

from kestrelq.credentials import Credentials
from kestrelq.producer import NotStored, Producer, Unreachable


def listing(servers: list[ServerProcess]) -> str:
    return ",".join(f"127.0.0.1:{s.port}" for s in servers)


def test_messages_spread_exactly_evenly(three: list[ServerProcess]) -> None:
    with Producer(listing(three), credentials=Credentials()) as producer:
        stored_at = [producer.send("spread", b"m%d" % i) for i in range(300)]
    assert {port: [a[1] for a in stored_at].count(port) for port in {a[1] for a in stored_at}} == {
        s.port: 100 for s in three
    }
    # Round robin: three messages in a row never share a server.
    assert all(len(set(stored_at[i : i + 3])) == 3 for i in range(0, 300, 3))
    assert sorted(len(drain(s.port, "spread")) for s in three) == [100, 100, 100]


def test_a_stopped_server_is_skipped_and_nothing_acknowledged_is_lost(
    three: list[ServerProcess],
) -> None:
    sent: list[bytes] = []
    with Producer(listing(three), credentials=Credentials()) as producer:
        for i in range(30):
            sent.append(b"before %d" % i)
            producer.send("fail", sent[-1])
        assert three[1].stop() == 0
        after = []
        for i in range(60):
            sent.append(b"during %d" % i)
            after.append(producer.send("fail", sent[-1]))  # no exception: STORED elsewhere
        assert ("127.0.0.1", three[1].port) not in after
        assert {a[1] for a in after} == {three[0].port, three[2].port}
        three[1].start()
        # Back after its backoff (at most 30 s): messages reach it again. Polled against a
        # generous deadline, not a count of sends, which a fast machine finishes first.
        count = 0

        def reached_again() -> bool:
            nonlocal count
            sent.append(b"after %d" % count)
            count += 1
            return producer.send("fail", sent[-1])[1] == three[1].port

        wait_until(reached_again, 90, interval_s=0.02, what="the restarted server to get a message")
    got = [m for s in three for m in drain(s.port, "fail")]
    assert sorted(got) == sorted(sent)


def test_no_server_answering_is_unreachable_naming_each() -> None:
    ports = [free_port(), free_port()]
    producer = Producer([("127.0.0.1", p) for p in ports], credentials=Credentials())
    with producer, pytest.raises(Unreachable) as caught:
        producer.send("q", b"x")
    for port in ports:
        assert f"127.0.0.1:{port} (" in str(caught.value)


def test_send_py_with_a_server_list(three: list[ServerProcess]) -> None:
    result = subprocess.run(
        [sys.executable, "send.py", "--quiet", "--count", "9", "hi"],
        cwd=REPO / "app",
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(KESTRELQ_SERVERS=listing(three)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"sent 9 message(s) to 'work' at {listing(three)}" in result.stdout
    assert [len(drain(s.port, "work")) for s in three] == [3, 3, 3]


def test_send_py_refuses_a_list_and_a_host_together() -> None:
    result = subprocess.run(
        [sys.executable, "send.py", "--servers", "a:1,b:2", "--host", "c", "hi"],
        cwd=REPO / "app",
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 64
    assert "not both" in result.stderr


def test_stats_over_a_server_list_shows_each_server_and_the_sum(
    three: list[ServerProcess],
) -> None:
    with Producer(listing(three[:2]), credentials=Credentials()) as producer:
        for i in range(10):
            producer.send("summed", b"x%d" % i)
    dead = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kestrelq",
            "stats",
            "--servers",
            f"{listing(three)},127.0.0.1:{dead}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 1, "one server could not be reached"
    assert f"cannot reach 127.0.0.1:{dead}" in result.stderr
    out = result.stdout
    for server in three:
        assert f"== 127.0.0.1:{server.port}\n" in out
    sections = out.split("== ")
    summed = [s for s in sections if s.startswith("every server (3 answered)")]
    assert len(summed) == 1, out
    header = next(line for line in summed[0].splitlines() if line.startswith("queue "))
    row = next(line for line in summed[0].splitlines() if line.startswith("summed "))
    cells = dict(zip(header.split(), row.split(), strict=True))
    assert cells["items"] == "10", row  # 5 + 5 + 0
    assert cells["total"] == "10", row
    per = [s for s in sections if s.startswith("127.0.0.1:")]
    counts = sorted(
        next((line.split()[1] for line in s.splitlines() if line.startswith("summed ")), "-")
        for s in per
    )
    assert counts == ["-", "-", "5", "5"], out  # the third and the dead one have none


def test_a_message_too_large_for_the_servers_is_not_stored_and_leaves_them_up(
    tmp_path: Path,
) -> None:
    # SERVER_ERROR "object too large" refuses this message, not the server: no backoff, and
    # the next message goes out at once.
    servers = [ServerProcess(tmp_path / f"d{i}", "--max-item-bytes", "1000") for i in range(2)]
    for server in servers:
        server.start()
    try:
        with Producer(
            listing(servers), credentials=Credentials(), backoff_initial_s=3600
        ) as producer:
            with pytest.raises(NotStored, match="object too large for cache"):
                producer.send("big", b"x" * 2000)
            assert all(producer.rotation.available(("127.0.0.1", s.port)) for s in servers)
            stored_at = {producer.send("big", b"small %d" % i) for i in range(2)}
            assert stored_at == {("127.0.0.1", s.port) for s in servers}
    finally:
        for server in servers:
            assert server.stop() == 0, server.log()
