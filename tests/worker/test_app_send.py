"""app/send.py's exit codes, as its docstring and docs/operations.md promise: 64 for bad
usage, apart from 2 for "cannot reach the queue" and 3 for a refused message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, ServerProcess, child_env, free_port
from pymemcache.client.base import Client


def send(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "send.py", *args],
        cwd=REPO / "app",
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(**env),
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(["--bogus"], {}, "unrecognized arguments: --bogus", id="unknown-option"),
        pytest.param(["--count", "0", "x"], {}, "--count must be at least 1", id="count-0"),
        pytest.param(["--port", "x", "hi"], {}, "argument --port: invalid int", id="bad-port"),
        pytest.param(["hi"], {"KESTRELQ_PORT": "x"}, "argument --port", id="bad-port-env"),
        pytest.param(["--arg", "novalue", "--task", "t"], {}, "must look like key=value", id="arg"),
        pytest.param(["--json", "{"], {}, "is not JSON", id="bad-json"),
        pytest.param(["--time-limit-s", "3", "hi"], {}, "goes with --task", id="limit-no-task"),
        pytest.param(["--task", "sleep", "--time-limit-s", "0"], {}, "positive", id="limit-zero"),
    ],
)
def test_bad_usage_exits_64(args: list[str], env: dict[str, str], message: str) -> None:
    # Nothing listens on this port: a usage error must be found before any connection.
    if "--port" not in args and "KESTRELQ_PORT" not in env:
        args = ["--port", str(free_port()), *args]
    result = send(*args, **env)
    assert result.returncode == 64, result.stderr
    assert message in result.stderr


def test_unreachable_queue_exits_2() -> None:
    result = send("--port", str(free_port()), "hello")
    assert result.returncode == 2, result.stderr
    assert "cannot reach the queue at 127.0.0.1:" in result.stderr


def test_time_limit_goes_into_the_envelope(server: ServerProcess) -> None:
    result = send(
        "--port", str(server.port), "--task", "sleep", "--arg", "seconds=9", "--time-limit-s", "3"
    )
    assert result.returncode == 0, result.stderr
    c = Client(("127.0.0.1", server.port), timeout=10, connect_timeout=5)
    try:
        doc = json.loads(c.get("work"))
    finally:
        c.close()
    assert (doc["task"], doc["args"], doc["time_limit_s"]) == ("sleep", {"seconds": 9}, 3.0)
