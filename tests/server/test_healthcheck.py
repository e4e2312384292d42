"""The queue image's healthcheck (images/queue/kestrelq-healthcheck) against a real server.

A server drained on purpose (`status readonly`) refuses the check's `set`; it must still be
healthy, or an orchestrator (the swarm stack's health check) restarts it in the middle of the
drain. A server that is not there is unhealthy.
"""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO, ServerProcess, child_env, free_port, request

CHECK = [sys.executable, str(REPO / "images/queue/kestrelq-healthcheck")]


def _check(port: int) -> subprocess.CompletedProcess[str]:
    env = child_env(KESTRELQ_PORT=str(port))
    return subprocess.run(CHECK, env=env, capture_output=True, text=True, timeout=60)


def test_a_drained_server_is_healthy(server: ServerProcess) -> None:
    up = _check(server.port)
    assert up.returncode == 0, up.stderr
    assert "READONLY" not in up.stdout
    assert request(server.port, b"status readonly\r\n") == b"END\r\n"
    drained = _check(server.port)
    assert drained.returncode == 0, drained.stderr
    assert "READONLY" in drained.stdout


def test_no_server_is_unhealthy() -> None:
    down = _check(free_port())
    assert down.returncode == 1
    assert "unhealthy" in down.stderr
