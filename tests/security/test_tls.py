"""The TLS listener against a real server process: pymemcache's tls_context, mutual TLS,
certificate reload without a restart, and clients that do not speak TLS as agreed."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
from pathlib import Path
from typing import cast

import pytest
from conftest import USERS, Certs, Starter, login_bytes, start_failure
from helpers import free_port, wait_until
from pymemcache.client.base import Client as Memcache

from kestrelq.server.tls import TlsFiles, build_context

ALICE = ("alice", USERS["alice"])


def tls_args(certs: Certs, port: int, *extra: str) -> tuple[str, ...]:
    return ("--tls-port", str(port), "--tls-cert", certs.path("server.pem"),
            "--tls-key", certs.path("server.key"), *extra)  # fmt: skip


def mutual_args(certs: Certs, port: int) -> tuple[str, ...]:
    return tls_args(certs, port, "--tls-ca", certs.path("ca.pem"), "--tls-verify", "required")


def call(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def closed(sock: socket.socket, timeout_s: float = 30.0) -> bool:
    """True once the peer has closed (EOF or reset) within the deadline."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def subject_cn(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    assert cert is not None
    # typeshed types every field of a certificate as one union; the subject is RDNs of pairs.
    subject = cast("tuple[tuple[tuple[str, str], ...], ...]", cert["subject"])
    return dict(rdn[0] for rdn in subject)["commonName"]


def test_pymemcache_over_tls(start_server: Starter, certs: Certs) -> None:
    port = free_port()
    ctx = certs.client_context()
    srv = start_server(*tls_args(certs, port), tls=ctx, tls_port=port)
    mc = Memcache(("127.0.0.1", port), tls_context=ctx, timeout=10, connect_timeout=5)
    try:
        mc.set("jobs", b"over tls")
        assert mc.get("jobs") == b"over tls"
    finally:
        mc.close()
    # The plain listener is beside it, and serves the same queues.
    with srv.open() as sock:
        assert call(sock, b"get jobs\r\n") == b"END\r\n"


def test_tls_with_authentication(start_server: Starter, certs: Certs, auth_file: Path) -> None:
    port = free_port()
    ctx = certs.client_context()
    start_server(*tls_args(certs, port), "--auth-file", str(auth_file), "--no-plain",
                 login=ALICE, tls=ctx, tls_port=port)  # fmt: skip
    mc = Memcache(("127.0.0.1", port), tls_context=ctx, timeout=10, connect_timeout=5)
    try:
        assert mc.set("auth", "alice wonder land", noreply=False) is True
        assert mc.version()
    finally:
        mc.close()


def test_no_plain_leaves_only_the_tls_listener(start_server: Starter, certs: Certs) -> None:
    port = free_port()
    srv = start_server(*tls_args(certs, port), "--no-plain", tls=certs.client_context(),
                       tls_port=port)  # fmt: skip
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=10).close()


def test_mutual_tls_accepts_a_client_certificate(start_server: Starter, certs: Certs) -> None:
    port = free_port()
    ctx = certs.client_context("client")
    start_server(*mutual_args(certs, port), tls=ctx, tls_port=port)
    mc = Memcache(("127.0.0.1", port), tls_context=ctx, timeout=10, connect_timeout=5)
    try:
        mc.set("jobs", b"x")
        assert mc.get("jobs") == b"x"
    finally:
        mc.close()


@pytest.mark.parametrize("cert", ["", "stranger"], ids=["no-certificate", "other-ca"])
def test_mutual_tls_refuses_a_client_without_a_good_certificate(
    start_server: Starter, certs: Certs, cert: str
) -> None:
    port = free_port()
    start_server(*mutual_args(certs, port), tls=certs.client_context("client"), tls_port=port)
    bad = certs.client_context(cert)
    # TLS 1.3 reports the refusal after the client's side of the handshake: on connect or on
    # the first read, but never with a reply.
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        bad.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        if not call(sock, b"version\r\n"):
            raise ConnectionError("closed without a reply")


@pytest.mark.parametrize("how", ["reload-command", "sighup"])
def test_certificates_are_reloaded_without_a_restart(
    start_server: Starter, certs: Certs, tmp_path: Path, how: str
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(certs.path("server.pem"), live / "cert.pem")
    shutil.copy(certs.path("server.key"), live / "key.pem")
    port = free_port()
    ctx = certs.client_context()
    srv = start_server("--tls-port", str(port), "--tls-cert", str(live / "cert.pem"),
                       "--tls-key", str(live / "key.pem"), tls=ctx, tls_port=port)  # fmt: skip
    before = srv.open(tls=True)
    try:
        assert isinstance(before, ssl.SSLSocket)
        assert subject_cn(before) == "kestrelq-server"
        shutil.copy(certs.path("server2.pem"), live / "cert.pem")
        shutil.copy(certs.path("server2.key"), live / "key.pem")
        if how == "sighup":
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "reloaded TLS certificate" in srv.log(), 30, what="the reload")
        else:
            with srv.open() as sock:
                assert call(sock, b"reload\r\n") == b"Reloaded config.\r\n"
        with srv.open(tls=True) as after:
            assert isinstance(after, ssl.SSLSocket)
            assert subject_cn(after) == "kestrelq-server-rotated"
            assert call(after, b"set q 0 0 1\r\nx\r\n") == b"STORED\r\n"
        # The connection made before the reload goes on with the old certificate.
        assert call(before, b"get q\r\n").startswith(b"VALUE q 0 1")
    finally:
        before.close()


def test_mutual_tls_still_required_after_a_reload(start_server: Starter, certs: Certs) -> None:
    port = free_port()
    srv = start_server(*mutual_args(certs, port), tls=certs.client_context("client"),
                       tls_port=port)  # fmt: skip
    with srv.open() as sock:
        assert call(sock, b"reload\r\n") == b"Reloaded config.\r\n"
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        if not call(sock, b"version\r\n"):
            raise ConnectionError("closed without a reply")
    with srv.open(tls=True) as sock:
        assert call(sock, b"version\r\n").startswith(b"VERSION ")


def test_a_bad_certificate_on_reload_keeps_the_old_one(
    start_server: Starter, certs: Certs, tmp_path: Path
) -> None:
    live = tmp_path / "cert.pem"
    shutil.copy(certs.path("server.pem"), live)
    port = free_port()
    srv = start_server("--tls-port", str(port), "--tls-cert", str(live),
                       "--tls-key", certs.path("server.key"), tls=certs.client_context(),
                       tls_port=port)  # fmt: skip
    live.write_text("not a certificate\n")
    with srv.open() as sock:
        reply = call(sock, b"reload\r\n")
    assert reply.startswith(b"SERVER_ERROR ") and str(live).encode() in reply
    with srv.open(tls=True) as sock:
        assert isinstance(sock, ssl.SSLSocket)
        assert subject_cn(sock) == "kestrelq-server"


def test_a_handshake_that_never_completes_is_dropped(start_server: Starter, certs: Certs) -> None:
    port = free_port()
    srv = start_server(*tls_args(certs, port), "--tls-handshake-timeout", "0.5",
                       tls=certs.client_context(), tls_port=port)  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        assert closed(silent)  # the server hung up; no deadline assertion on when
    with srv.open(tls=True) as sock:
        assert call(sock, b"stats\r\n").startswith(b"STAT ")


def test_plaintext_on_the_tls_port_is_closed(start_server: Starter, certs: Certs) -> None:
    port = free_port()
    srv = start_server(*tls_args(certs, port), tls=certs.client_context(), tls_port=port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"set q 0 0 1\r\nx\r\nversion\r\n")
        data = b""
        sock.settimeout(30)
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    assert b"VERSION" not in data and b"STORED" not in data
    with srv.open() as plain:
        assert call(plain, b"get q\r\n") == b"END\r\n"  # nothing was stored


def test_tls_on_the_plain_port_fails_and_costs_nothing(
    start_server: Starter, certs: Certs, auth_file: Path
) -> None:
    srv = start_server("--auth-file", str(auth_file), login=ALICE)
    with (
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, TimeoutError)),
    ):
        certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
    with srv.open() as sock:
        assert call(sock, login_bytes(*ALICE)) == b"STORED\r\n"
        assert call(sock, b"version\r\n").startswith(b"VERSION ")


def test_tls_1_2_is_the_minimum_and_is_served(start_server: Starter, certs: Certs) -> None:
    ctx = build_context(TlsFiles(certs.path("server.pem"), certs.path("server.key")))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    port = free_port()
    start_server(*tls_args(certs, port), tls=certs.client_context(), tls_port=port)
    client = certs.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.version() == "TLSv1.2"
        assert call(sock, b"version\r\n").startswith(b"VERSION ")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ("--tls-cert", "/nope/cert.pem"),
            "cannot read TLS certificate /nope/cert.pem",
            id="missing-cert",
        ),
        pytest.param(
            ("--tls-cert", "{server_pem}", "--tls-key", "/nope/key.pem"),
            "cannot read TLS key /nope/key.pem",
            id="missing-key",
        ),
        pytest.param(("--tls-cert", "{garbage}"), "TLS certificate {garbage}", id="garbage"),
        pytest.param(
            ("--tls-cert", "{server_pem}", "--tls-key", "{client_key}"),
            "with key {client_key}: not a usable",
            id="wrong-key",
        ),
        pytest.param(
            ("--tls-cert", "{server_pem}", "--tls-key", "{server_key}", "--tls-verify", "required"),
            "needs tls_ca",
            id="verify-without-ca",
        ),
        pytest.param(
            (
                "--tls-cert",
                "{server_pem}",
                "--tls-key",
                "{server_key}",
                "--tls-ca",
                "{garbage}",
                "--tls-verify",
                "required",
            ),
            "TLS CA file {garbage}",
            id="garbage-ca",
        ),
        pytest.param(("--no-plain",), "plain listener is off", id="no-listener"),
    ],
)
def test_bad_tls_settings_stop_the_start(
    tmp_path: Path, certs: Certs, args: tuple[str, ...], expected: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    names = {"garbage": str(garbage), **{n.replace(".", "_"): certs.path(n) for n in
             ("server.pem", "server.key", "client.key")}}  # fmt: skip
    args = tuple(a.format(**names) if "{" in a else a for a in args)
    port = ("--tls-port", str(free_port())) if args != ("--no-plain",) else ()
    code, out = start_failure(tmp_path, *port, *args)
    assert code == 2
    assert expected.format(**names) in out
