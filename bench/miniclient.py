"""The minimal memcache client: one request, one reply, nothing else, the same for every server.

pymemcache spends tens of microseconds of Python per call (argument checks, key encoding,
reply matching), which hides most of a server's own cost, and it cannot read darner's
replies (darner's VALUE line carries the bare queue name, pymemcache wants the key it sent).
This client does only what the wire needs: one `sendall` per command, then `recv` until the
reply is whole. No pipelining: each reply is read before the next command goes out, so the
rate it measures is the round trip through the server, with as little client as Python
allows.

It checks what it must to keep a run honest: `set` gets exactly `STORED`, a `get` reply is
`END` or one `VALUE` with the announced length followed by `END`. Anything else raises.
"""

from __future__ import annotations

import socket

# A reply to `get` ends with the data's CRLF and then END: 7 bytes after the data.
_VALUE_TAIL = b"\r\nEND\r\n"


class MiniClientError(RuntimeError):
    pass


def connect(host: str, port: int, timeout_s: float = 30.0) -> MiniClient:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return MiniClient(sock)


class MiniClient:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # Bound once: the attribute lookups are a visible part of a call this small.
        self._recv = sock.recv
        self._send = sock.sendall
        self._buf = b""

    def set(self, key: bytes, value: bytes) -> None:
        self._send(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        line = self._line()
        if line != b"STORED":
            raise MiniClientError(f"set {key!r}: {line!r}")

    def get(self, key: bytes) -> bytes | None:
        """The value, or None on END."""
        self._send(b"get %s\r\n" % key)
        line = self._line()
        if line == b"END":
            return None
        parts = line.split()
        # VALUE <key> <flags> <bytes>; the key is not compared: darner answers the bare queue
        # name where kestrelq echoes the key with its options.
        if len(parts) != 4 or parts[0] != b"VALUE":
            raise MiniClientError(f"get {key!r}: {line!r}")
        size = int(parts[3])
        body = self._exact(size + len(_VALUE_TAIL))
        if body[size:] != _VALUE_TAIL:
            raise MiniClientError(f"get {key!r}: {size} bytes not followed by END")
        return body[:size]

    def close(self) -> None:
        self._sock.close()

    def _more(self) -> bytes:
        chunk = self._recv(1 << 16)
        if not chunk:
            raise MiniClientError("the server closed the connection")
        return chunk

    def _line(self) -> bytes:
        buf = self._buf
        eol = buf.find(b"\r\n")
        while eol < 0:
            buf += self._more()
            eol = buf.find(b"\r\n")
        self._buf = buf[eol + 2 :]
        return buf[:eol]

    def _exact(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            buf += self._more()
        self._buf = buf[n:]
        return buf[:n]
