"""`kestrelq work` as a real process: warm and cold SIGTERM, bad handlers."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, child_env, wait_until
from pymemcache.client.base import Client

SLOW_HANDLER = """
import os, pathlib, time

def handle(body: bytes) -> None:
    here = pathlib.Path(os.environ["MARKS"])
    (here / "started").write_bytes(body)
    time.sleep(float(os.environ.get("SLOW_S", "2")))
    (here / "finished").write_bytes(body)
"""


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    c = Client(("127.0.0.1", server.port), timeout=10, connect_timeout=5)
    yield c
    c.close()


def start_worker(tmp_path: Path, port: int, slow_s: float) -> subprocess.Popen[str]:
    (tmp_path / "slowmod.py").write_text(SLOW_HANDLER)
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "kestrelq", "work", "work", "--handler", "slowmod:handle"]
    cmd += ["--port", str(port), "--wait-ms", "200"]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(MARKS=str(marks), SLOW_S=str(slow_s)),
    )


def read_until(proc: subprocess.Popen[str], text: str) -> str:
    """Read the worker's output line by line until a line contains `text`; return it all."""
    assert proc.stdout is not None
    seen = []
    for _ in range(100):  # bounded: startup logs a handful of lines
        line = proc.stdout.readline()
        seen.append(line)
        if text in line or not line:
            break
    out = "".join(seen)
    assert text in out, out
    return out


def test_first_sigterm_finishes_and_confirms_the_current_message(
    tmp_path: Path, server: ServerProcess, client: Client
) -> None:
    assert client.set("work", b"slow job", noreply=False)
    worker = start_worker(tmp_path, server.port, slow_s=1.5)
    try:
        wait_until((tmp_path / "marks/started").exists, 60, what="the handler to start")
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=20)
    finally:
        worker.kill()
    assert worker.returncode == 0, out
    assert (tmp_path / "marks/finished").read_bytes() == b"slow job"
    assert "SIGTERM: warm shutdown" in out
    assert "stopped (warm): processed=1 failed=0 redelivered=0" in out
    # Confirmed: the message is not back in the queue for anyone to redo.
    assert client.get("work/t=200") is None


def test_second_sigterm_gives_the_message_back_and_exits(
    tmp_path: Path, server: ServerProcess, client: Client
) -> None:
    assert client.set("work", b"endless job", noreply=False)
    worker = start_worker(tmp_path, server.port, slow_s=60)
    try:
        wait_until((tmp_path / "marks/started").exists, 60, what="the handler to start")
        worker.send_signal(signal.SIGTERM)
        # Two signals sent back to back may be delivered as one: wait for the first to land.
        seen = read_until(worker, "warm shutdown")
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=20)
        out = seen + out
    finally:
        worker.kill()
    assert worker.returncode == 1, out
    assert not (tmp_path / "marks/finished").exists()
    assert "cold shutdown" in out
    assert "stopped (cold): processed=0 failed=0 redelivered=1" in out
    assert client.get("work/t=1000") == b"endless job"


def test_sigterm_while_idle_exits_promptly(tmp_path: Path, server: ServerProcess) -> None:
    worker = start_worker(tmp_path, server.port, slow_s=0)
    try:
        # It logs that it is consuming once its signal handlers are in place.
        seen = read_until(worker, "consuming queue")
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=10)
        out = seen + out
    finally:
        worker.kill()
    assert worker.returncode == 0, out
    assert "stopped (warm): processed=0" in out


def test_unknown_handler_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kestrelq", "work", "work", "--handler", "nope_mod:handle"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "kestrelq work: cannot import module 'nope_mod'" in result.stderr
