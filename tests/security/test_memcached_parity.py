"""The login conversation against memcached itself (`-Y`), beside kestrelq's: the same bytes in
get the same kind of answer, and our client logs in to either. memcached 1.6 answers a failed
login with `CLIENT_ERROR unauthenticated` where the agreed contract (docs/protocol.md) says
`authentication failure`; clients see a CLIENT_ERROR from both, and ours knows both words."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SecureServer, Starter
from helpers import Wire, free_port, wait_until

from kestrelq.credentials import Credentials, memcache_client
from kestrelq.errors import CredentialsRefused

# memcached 1.6 takes no space in a password: a plain one for both servers.
USER, PASSWORD = "carol", "s3cret"
GOOD = f"set auth 0 0 12\r\n{USER} {PASSWORD}\r\n".encode()
BAD = b"set auth 0 0 10\r\ncarol nope\r\n"


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"{USER}:{PASSWORD}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def memcached(users: Path) -> Iterator[int]:
    if shutil.which("memcached") is None:
        pytest.skip("memcached is not installed")
    port = free_port()
    cmd = ["memcached", "-Y", str(users), "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
    if os.geteuid() == 0:
        cmd += ["-u", "root"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def up() -> bool:
            try:
                Wire(port).close()
                return True
            except OSError:
                return False

        wait_until(up, 60, what="memcached")
        yield port
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def kestrelq(start_server: Starter, users: Path) -> SecureServer:
    return start_server("--auth-file", str(users), login=(USER, PASSWORD))


def ports(memcached: int, kestrelq: SecureServer) -> list[int]:
    return [memcached, kestrelq.port]


def test_a_good_login_then_commands(memcached: int, kestrelq: SecureServer) -> None:
    for port in ports(memcached, kestrelq):
        with Wire(port) as w:
            assert w.call(GOOD) == b"STORED\r\n"
            assert w.call(b"version\r\n").startswith(b"VERSION ")


def test_a_command_before_login(memcached: int, kestrelq: SecureServer) -> None:
    for port in ports(memcached, kestrelq):
        with Wire(port) as w:
            assert w.call(b"version\r\n") == b"CLIENT_ERROR unauthenticated\r\n"


def test_a_bad_login_is_a_client_error_and_nothing_more(
    memcached: int, kestrelq: SecureServer
) -> None:
    for port in ports(memcached, kestrelq):
        with Wire(port) as w:
            assert w.call(BAD + b"version\r\n").startswith(b"CLIENT_ERROR ")
            # kestrelq closes; memcached 1.6 leaves the connection open and stops answering.
            closed = w.at_eof(30 if port == kestrelq.port else 2)
            assert closed or port == memcached
            assert b"VERSION" not in w.buf


def test_our_pymemcache_client_logs_in_to_both(memcached: int, kestrelq: SecureServer) -> None:
    for port in ports(memcached, kestrelq):
        client = memcache_client(("127.0.0.1", port), Credentials(USER, PASSWORD), timeout=10)
        try:
            client.set("k", b"v", noreply=False)
            assert client.get("k") == b"v"
        finally:
            client.close()
        wrong = memcache_client(("127.0.0.1", port), Credentials(USER, "nope"), timeout=10)
        with pytest.raises(CredentialsRefused):
            wrong.get("k")
        wrong.close()
