"""Fixtures for the security tests: certificates made at test time, secured server processes.

Certificates are made with the `openssl` command (the venv has no `cryptography`) by
bench.security's helpers, into a temporary directory: no key is ever committed. One CA signs
the server's certificate (for 127.0.0.1 and localhost), a second one for the reload tests, and
a client certificate; an unrelated CA signs a client certificate that the server must refuse.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from helpers import ServerProcess, wait_until

from kestrelq.certs import openssl_ca, openssl_cert

USERS = {"alice": "wonder land", "admin": "s3cret:with-colon"}


def login_bytes(user: str, password: str, noreply: bool = False) -> bytes:
    data = f"{user} {password}".encode()
    head = f"set auth 0 0 {len(data)}{' noreply' if noreply else ''}\r\n".encode()
    return head + data + b"\r\n"


@dataclass(frozen=True)
class Certs:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def client_context(self, cert: str = "", ca: str = "ca") -> ssl.SSLContext:
        """What an application would build: verify the server; present `cert` if named."""
        ctx = ssl.create_default_context(cafile=self.path(f"{ca}.pem"))
        if cert:
            ctx.load_cert_chain(self.path(f"{cert}.pem"), self.path(f"{cert}.key"))
        return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    openssl_ca(d, "ca")
    openssl_ca(d, "other-ca")
    openssl_cert(d, "server", "kestrelq-server", "ca", "serverAuth")
    openssl_cert(d, "server2", "kestrelq-server-rotated", "ca", "serverAuth")
    openssl_cert(d, "client", "worker", "ca", "clientAuth")
    openssl_cert(d, "stranger", "stranger", "other-ca", "clientAuth")
    return Certs(d)


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    path.chmod(0o600)
    return path


class SecureServer(ServerProcess):
    """A ServerProcess whose readiness probe logs in first and may speak TLS.

    `probe_port`/`probe_tls` say where to look (a TLS-only server has no plain listener).
    """

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        login: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_port: int = 0,
    ) -> None:
        super().__init__(data_dir, *args)
        self.login = login
        self.tls = tls
        self.tls_port = tls_port

    def open(self, tls: bool = False, timeout_s: float = 10.0) -> socket.socket:
        port = self.tls_port if tls else self.port
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        if tls:
            assert self.tls is not None
            return self.tls.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        hello = login_bytes(*self.login) if self.login else b""

        def ready() -> bool:
            if not self.listening():
                return False
            try:
                with self.open(tls=self.tls is not None and self.tls_port != 0) as sock:
                    sock.sendall(hello + b"version\r\n")
                    data = b""
                    while b"VERSION" not in data:
                        chunk = sock.recv(4096)
                        if not chunk:
                            return False
                        data += chunk
                    return True
            except OSError:
                return False

        wait_until(ready, timeout_s, what=f"kestrelq on port {self.port}")


class Starter(Protocol):
    def __call__(
        self,
        *args: str,
        login: tuple[str, str] | None = ...,
        tls: ssl.SSLContext | None = ...,
        tls_port: int = ...,
    ) -> SecureServer: ...


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Starter]:
    """Start a SecureServer (its own data dir); each is stopped at teardown if still running."""
    started: list[SecureServer] = []

    def start(
        *args: str,
        login: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_port: int = 0,
    ) -> SecureServer:
        srv = SecureServer(
            tmp_path / f"data{len(started)}", *args, login=login, tls=tls, tls_port=tls_port
        )
        started.append(srv)
        srv.start()
        return srv

    yield start
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            assert srv.stop() == 0, srv.log()


def start_failure(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run `kestrelq serve` expected to refuse to start: its exit code and output."""
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "kestrelq", "serve", "--port", "0",
         "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr
