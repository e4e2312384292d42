"""A tiny blocking beanstalkd client: put, reserve-with-timeout, delete. Enough for the bench.

Written here rather than taken from PyPI so that its per-call cost is of the same kind as
pymemcache's: one sendall, one buffered read, no extra layers.
"""

from __future__ import annotations

import socket


class BeanstalkError(RuntimeError):
    pass


class Beanstalk:
    def __init__(self, host: str, port: int, timeout_s: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    def close(self) -> None:
        self._sock.close()

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise BeanstalkError("connection closed by beanstalkd")
        self._buf += chunk

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            self._fill()

    def _block(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[: n + 2]
        return data

    def put(self, body: bytes, priority: int = 1024, ttr: int = 60) -> int:
        self._sock.sendall(b"put %d 0 %d %d\r\n%b\r\n" % (priority, ttr, len(body), body))
        line = self._line()
        if not line.startswith(b"INSERTED "):
            raise BeanstalkError(f"put: {line!r}")
        return int(line[9:])

    def reserve(self, timeout_s: int = 0) -> tuple[int, bytes] | None:
        """The next ready job (id, body), or None when none comes within timeout_s."""
        self._sock.sendall(b"reserve-with-timeout %d\r\n" % timeout_s)
        line = self._line()
        if line == b"TIMED_OUT":
            return None
        parts = line.split()
        if len(parts) != 3 or parts[0] != b"RESERVED":
            raise BeanstalkError(f"reserve: {line!r}")
        return int(parts[1]), self._block(int(parts[2]))

    def delete(self, job_id: int) -> None:
        self._sock.sendall(b"delete %d\r\n" % job_id)
        line = self._line()
        if line != b"DELETED":
            raise BeanstalkError(f"delete {job_id}: {line!r}")

    def stats_job_count(self) -> int:
        """current-jobs-ready from the server's stats (YAML-ish `key: value` lines)."""
        self._sock.sendall(b"stats\r\n")
        line = self._line()
        if not line.startswith(b"OK "):
            raise BeanstalkError(f"stats: {line!r}")
        body = self._block(int(line[3:]))
        for row in body.decode().splitlines():
            if row.startswith("current-jobs-ready:"):
                return int(row.split(":", 1)[1])
        raise BeanstalkError("stats: no current-jobs-ready")
