"""libmemcached's own command-line tools (Debian's libmemcached-tools) against a real server.

libmemcached is also the library under PHP's Memcached extension, so what these tools accept
is what those users get. It is stricter than pymemcache in one place: it parses the `version`
reply as major.minor.micro and refuses a major number of 0, which made memcping and memcstat
fail against a `VERSION 0.1.0`.

A missing tool is a failure, not a skip: CI installs the package (`.ci/run`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, drain

from kestrelq import __version__


def run(tool: str, server: ServerProcess, *args: str, cwd: Path | None = None) -> str:
    path = shutil.which(tool)
    assert path is not None, f"{tool} not found: install Debian's libmemcached-tools"
    done = subprocess.run(
        [path, f"--servers=127.0.0.1:{server.port}", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{tool} exited {done.returncode}: {done.stderr}{done.stdout}"
    assert "failed" not in done.stderr.lower(), done.stderr
    return done.stdout


def test_memcping_accepts_the_version_reply(server: ServerProcess) -> None:
    run("memcping", server)


def test_memcstat_shows_the_server_stats(server: ServerProcess) -> None:
    with Wire(server.port) as w:
        assert w.call(b"set work 0 0 5\r\n12345\r\n") == b"STORED\r\n"
    out = run("memcstat", server)
    assert f"version: {__version__}" in out
    assert "curr_items: 1" in out
    assert "queue_work_items: 1" in out


def test_memccp_enqueues_and_memccat_dequeues_in_order(
    server: ServerProcess, tmp_path: Path
) -> None:
    # memccp stores each file under its base name: three copies of `jobs` are three items.
    jobs = tmp_path / "jobs"
    for text in ("first", "second", "third"):
        jobs.write_text(text)
        run("memccp", server, "jobs", cwd=tmp_path)
    for text in ("first", "second", "third"):
        assert run("memccat", server, "jobs") == text + "\n"  # memccat ends each value with one
    assert drain(server.port, "jobs") == []  # all three were taken, none left behind


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_memccp_round_trips_binary_data(server: ServerProcess, tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    (tmp_path / "blob").write_bytes(data)
    run("memccp", server, "blob", cwd=tmp_path)
    assert drain(server.port, "blob") == [data]
