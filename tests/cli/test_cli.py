"""`kestrelq stats` and `kestrelq peek` against a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from helpers import ServerProcess, Wire, free_port, wait_until


def kestrelq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The caller's own KESTRELQ_HOST/PORT must not leak in: each test says what it sets.
    environ = {k: v for k, v in os.environ.items() if k not in ("KESTRELQ_HOST", "KESTRELQ_PORT")}
    return subprocess.run(
        [sys.executable, "-m", "kestrelq", *args],
        capture_output=True, text=True, timeout=30, env={**environ, **env},
    )  # fmt: skip


def test_stats_table_per_queue(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        for data in (b"one", b"two"):
            assert w.call(b"set jobs_high 0 0 3\r\n" + data + b"\r\n") == b"STORED\r\n"
        assert w.call(b"get jobs_high/open\r\n").startswith(b"VALUE")
        result = kestrelq("stats", "--port", str(server.port))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("kestrelq ") and "fsync always" in lines[0]
    assert lines[1].split() == [
        "queue", "items", "bytes", "in_memory", "open", "waiters", "age_ms", "oldest_ms",
        "total", "dead",
    ]  # fmt: skip
    # items 1 (3 bytes, in memory), 1 open read, 0 waiters, ages, 2 ever added, 0 dead
    name, items, size, mem, open_, waiters, _age, _oldest, total, dead = lines[2].split()
    assert (name, items, size, mem, open_, waiters, total, dead) == (
        "jobs_high", "1", "3", "1", "1", "0", "2", "0"
    )  # fmt: skip


def test_peek_shows_head_without_taking_it(server: ServerProcess) -> None:
    payload = b"first line\r\nEND\r\nstill the item"
    with Wire(server.port) as w:
        assert w.call(b"set q 5 0 %d\r\n%s\r\n" % (len(payload), payload)) == b"STORED\r\n"
    result = kestrelq("peek", "q", "--port", str(server.port))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"q: head item, {len(payload)} bytes, flags 5"
    assert "still the item" in result.stdout
    empty = kestrelq("peek", "other", "--port", str(server.port))
    assert empty.stdout.strip() == "other: empty"
    with Wire(server.port) as w:
        assert w.call(b"get q\r\n").startswith(b"VALUE q 5 %d" % len(payload))


def test_unreachable_server_is_a_clear_error() -> None:
    result = kestrelq("stats", "--port", str(free_port()), "--timeout", "2")
    assert result.returncode == 1
    assert "cannot reach 127.0.0.1:" in result.stderr


def test_bad_config_stops_serve_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nfsync = "sometimes"\n')
    result = kestrelq("serve", "--config", str(bad), "--port", str(free_port()))
    assert result.returncode == 2
    assert "fsync must be always, never or milliseconds" in result.stderr


def test_client_commands_find_the_server_in_the_environment(server: ServerProcess) -> None:
    # As `docker compose exec app kestrelq stats` runs them: KESTRELQ_HOST=queue, no options.
    with Wire(server.port) as w:
        assert w.call(b"set env_only 0 0 4\r\nhead\r\n") == b"STORED\r\n"
    env = {"KESTRELQ_HOST": "localhost", "KESTRELQ_PORT": str(server.port)}
    stats = kestrelq("stats", **env)
    assert stats.returncode == 0, stats.stderr
    assert any(line.split()[:2] == ["env_only", "1"] for line in stats.stdout.splitlines())
    peek = kestrelq("peek", "env_only", **env)
    assert peek.returncode == 0, peek.stderr
    assert peek.stdout.splitlines() == ["env_only: head item, 4 bytes, flags 0", "head"]


def test_client_options_win_over_the_environment(server: ServerProcess) -> None:
    env = {"KESTRELQ_HOST": "localhost", "KESTRELQ_PORT": str(free_port())}
    result = kestrelq("peek", "q", "--host", "127.0.0.1", "--port", str(server.port), **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "q: empty"


def test_client_commands_name_the_address_they_tried() -> None:
    port = free_port()
    result = kestrelq("stats", "--timeout", "2", KESTRELQ_HOST="localhost", KESTRELQ_PORT=str(port))
    assert result.returncode == 1
    assert f"cannot reach localhost:{port}" in result.stderr


def test_bad_port_in_the_environment_is_a_clear_error() -> None:
    result = kestrelq("stats", KESTRELQ_PORT="twenty")
    assert result.returncode == 2
    assert "KESTRELQ_PORT must be a number, not 'twenty'" in result.stderr


def test_a_server_list_of_one_in_the_environment_is_that_server(server: ServerProcess) -> None:
    # KESTRELQ_SERVERS naming one server: its stats, shown as one server's (no headings).
    with Wire(server.port) as w:
        assert w.call(b"set listed_once 0 0 1\r\nx\r\n") == b"STORED\r\n"
    result = kestrelq("stats", KESTRELQ_SERVERS=f"127.0.0.1:{server.port}")
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:2] == ["listed_once", "1"] for line in result.stdout.splitlines())
    assert "== " not in result.stdout


def test_a_server_list_that_resolves_to_nothing_fails() -> None:
    # Not "0 answered" with exit 0: a monitoring script must see that nothing was asked.
    result = kestrelq("stats", KESTRELQ_SERVERS="no-such-host.invalid:22133")
    assert result.returncode == 1
    assert "resolve to none" in result.stderr


def test_a_port_of_0_is_refused_not_taken_for_the_default() -> None:
    result = kestrelq("stats", "--port", "0")
    assert result.returncode == 2
    assert "the port must be from 1 to 65535, not 0" in result.stderr


def test_peek_refuses_a_bad_queue_name(server: ServerProcess) -> None:
    result = kestrelq("peek", "bad.name", "--port", str(server.port))
    assert result.returncode == 1
    assert "bad queue name" in result.stderr


def _ctrl_c_as_in_a_terminal() -> None:
    # A shell ignores SIGINT in what it starts in the background (`make test &`, a CI runner's
    # `nohup ... &`), the ignoring is inherited, and Python then leaves it ignored: the watch
    # would never see this test's Ctrl-C. A user's terminal delivers it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_stats_watch_redraws_until_ctrl_c(server: ServerProcess) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("KESTRELQ_HOST", "KESTRELQ_PORT")}
    # A list of servers, one of them down: each round shows it as unreachable and goes on.
    servers = f"127.0.0.1:{server.port},127.0.0.1:{free_port()}"
    with subprocess.Popen(
        [sys.executable, "-m", "kestrelq", "stats", "--watch", "--interval", "0.2",
         "--servers", servers],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    ) as watch:  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(watch.stdout or ()), daemon=True)
        reader.start()
        try:
            wait_until(lambda: any("(no queues)" in line for line in lines), 60, what="a round")
            with Wire(server.port) as w:
                assert w.call(b"set watched 0 0 2\r\nhi\r\n") == b"STORED\r\n"
            wait_until(
                lambda: any(line.split()[:3] == ["watched", "1", "2"] for line in lines), 60,
                what="a round that shows the new queue",
            )  # fmt: skip
        finally:
            watch.send_signal(signal.SIGINT)
            code = watch.wait(30)
            reader.join(30)
        errors = watch.stderr.read() if watch.stderr else ""
    assert code == 0, errors
    assert sum("Ctrl-C to stop" in line for line in lines) >= 2
    assert any(line.startswith("== every server (1 answered)") for line in lines)
    assert "cannot reach 127.0.0.1:" in errors


def test_stats_watch_refuses_a_bad_interval() -> None:
    result = kestrelq("stats", "--watch", "--interval", "0")
    assert result.returncode == 2
    assert "must be a number of seconds above 0" in result.stderr


def test_drain_does_not_wait_for_dead_letter_queues(server: ServerProcess) -> None:
    # Dead letters no worker reads, in work_dead (the default name); work itself is empty.
    # A drain waiting for them would never end: with --wait-s it gives up, exit 1.
    with Wire(server.port) as w:
        assert w.call(b"set work_dead 0 0 4\r\nlost\r\n") == b"STORED\r\n"
        assert w.call(b"set work 0 0 2\r\nok\r\n") == b"STORED\r\n"
        assert w.call(b"get work\r\n").startswith(b"VALUE work")
    where = f"127.0.0.1:{server.port}"
    result = kestrelq("drain", where, "--wait-s", "20", "--poll-s", "0.2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "drained in" in result.stdout
    assert "1 items left in dead-letter queues (work_dead 1)" in result.stdout
    assert f"kestrelq requeue work_dead work --host 127.0.0.1 --port {server.port}" in result.stdout
    # One not named QUEUE_dead is waited for, unless named with --dead-letter.
    assert kestrelq("undrain", where).returncode == 0
    with Wire(server.port) as w:
        assert w.call(b"set parked 0 0 4\r\nlost\r\n") == b"STORED\r\n"
    waited = kestrelq("drain", where, "--wait-s", "1", "--poll-s", "0.2")
    assert waited.returncode == 1 and "(parked)" in waited.stdout, waited.stdout + waited.stderr
    named = kestrelq("drain", where, "--dead-letter", "parked", "--wait-s", "20")
    assert named.returncode == 0, named.stdout + named.stderr
    assert "2 items left in dead-letter queues (parked 1, work_dead 1)" in named.stdout
    # Nothing was taken from them.
    with Wire(server.port) as w:
        assert w.call(b"get work_dead/peek\r\n").startswith(b"VALUE work_dead")
        assert w.call(b"get parked/peek\r\n").startswith(b"VALUE parked")


def test_drain_waits_for_a_dead_letter_queue_s_open_reads_and_for_a_lone_dead_name() -> None:
    from kestrelq.server.cli import _not_empty

    def q(items: int, open_reads: int = 0) -> dict[str, str]:
        return {"items": str(items), "open_transactions": str(open_reads)}

    # work_dead beside work: dead letters, not waited for; but an open read on it (a requeue
    # moving one) is. order_dead with no order queue is a queue of its own: waited for.
    left, dead = _not_empty({"work": q(0), "work_dead": q(3, 1), "order_dead": q(2)})
    assert left == {"work_dead": (0, 1), "order_dead": (2, 0)}
    assert dead == {"work_dead": 3}
    left, dead = _not_empty({"work": q(0), "work_dead": q(3)})
    assert (left, dead) == ({}, {"work_dead": 3})
