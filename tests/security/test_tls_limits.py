"""TLS clients against a real server process: a close_notify right after a command."""

from __future__ import annotations

import socket
import ssl

from conftest import Certs, Starter
from helpers import free_port
from test_tls import call, tls_args


def _send_then_close_notify(port: int, ctx: ssl.SSLContext, payload: bytes) -> bytes:
    """Send `payload` over TLS, then close_notify at once (as `unwrap()` does), and return
    every byte of application data the server sends before it closes."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

    def pump() -> None:
        if data := outgoing.read():
            raw.sendall(data)

    with raw:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
                incoming.write(raw.recv(65536))
        pump()
        tls.write(payload)
        try:
            tls.unwrap()  # queues our close_notify
        except ssl.SSLWantReadError:
            pass
        pump()
        got = b""
        while data := raw.recv(65536):
            incoming.write(data)
            try:
                while True:
                    got += tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
        return got


def test_a_reply_held_for_fsync_survives_a_close_notify(
    start_server: Starter, certs: Certs
) -> None:
    # With fsync `always`, STORED waits for the group fsync; the client's close_notify
    # arrives before that. The reply must still be sent (over plain TCP a half-close gets it).
    port = free_port()
    ctx = certs.client_context()
    srv = start_server(*tls_args(certs, port), "--fsync", "always", tls=ctx, tls_port=port)
    assert _send_then_close_notify(port, ctx, b"set tq 0 0 1\r\nx\r\n") == b"STORED\r\n"
    with srv.open(tls=True) as sock:
        assert call(sock, b"get tq\r\n") == b"VALUE tq 0 1\r\nx\r\nEND\r\n"
