"""A small blocking client for kestrelq's own tools: stats, peek, the healthcheck, tests, bench.

Applications keep using a memcache library (pymemcache); this client is for what such a library
cannot do: raw stats and dump_stats, monitor, exact replies. All the protocol is in the sans-IO
`kestrelq.protocol.client.ClientConnection`; this module only moves bytes over one socket.

    with Client.from_env() as client:        # KESTRELQ_HOST / KESTRELQ_PORT, else 127.0.0.1:22133;
                                             # login and TLS: kestrelq.credentials
        client.set("jobs", b"payload")
        item = client.get("jobs/open")       # a Value, or None when the queue is empty
        print(client.stats()["curr_items"])
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping

from kestrelq.credentials import Credentials, refused
from kestrelq.errors import ReplyError
from kestrelq.protocol import commands as c
from kestrelq.protocol.client import (
    ClientConnection,
    Count,
    DumpStats,
    ErrorReply,
    Message,
    Reply,
    Stats,
    Status,
    Value,
    Values,
    Version,
)
from kestrelq.protocol.parser import parse_get_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 22133

__all__ = ["Client", "ReplyError", "Value", "address_from_env"]


def address_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """The server's address from KESTRELQ_HOST and KESTRELQ_PORT (empty means the default)."""
    env = os.environ if environ is None else environ
    host = env.get("KESTRELQ_HOST") or DEFAULT_HOST
    port = env.get("KESTRELQ_PORT") or str(DEFAULT_PORT)
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"KESTRELQ_PORT must be a number, not {port!r}") from None


class Client:
    """One connection; every call sends its commands and reads their replies before returning."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        timeout: float | None = 5.0,
        credentials: Credentials | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.credentials = credentials or Credentials()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = ClientConnection()
        try:
            if self.credentials.tls is not None:
                self.sock = self.credentials.tls.wrap_socket(self.sock, server_hostname=host)
            if self.credentials.user:
                self._checked(c.Set("auth", 0, 0, self.credentials.login))
        except BaseException:
            self.sock.close()
            raise

    @classmethod
    def from_env(cls, timeout: float | None = 5.0) -> Client:
        """The server, login and TLS settings from KESTRELQ_* (ConfigError if bad)."""
        host, port = address_from_env()
        return cls(host, port, timeout, Credentials.from_env())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- raw -------------------------------------------------------------------------------

    def pipeline(self, commands: Iterable[c.Command]) -> list[Reply]:
        """Send every command in one write; their replies, in order (none for noreply)."""
        conn = self.conn
        before = conn.pending
        self.sock.sendall(b"".join(conn.send(cmd) for cmd in commands))
        return [self.next_reply() for _ in range(conn.pending - before)]

    def request(self, command: c.Command) -> Reply | None:
        """Send one command; its reply, or None if it expects none (noreply, quit)."""
        replies = self.pipeline([command])
        return replies[0] if replies else None

    def next_reply(self) -> Reply:
        """The next reply, reading as much as it takes. ConnectionError if the server hangs up."""
        conn = self.conn
        while (reply := conn.next_event()) is None:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"{self.host}:{self.port} closed the connection")
            conn.receive_data(chunk)
        return reply

    # -- commands --------------------------------------------------------------------------

    def set(self, queue: str, data: bytes, flags: int = 0, exptime: int = 0) -> bool:
        """Enqueue; True when STORED, False when the queue refused it (NOT_STORED)."""
        reply = self._checked(c.Set(queue, flags, exptime, data))
        return reply is Status.STORED

    def get(self, key: str) -> Value | None:
        """`queue[/open][/close][/peek][/abort][/t=ms]`: the item, or None."""
        reply = self._checked(parse_get_key(key.encode()))
        assert isinstance(reply, Values)
        return reply.items[0] if reply.items else None

    def delete(self, queue: str) -> None:
        self._checked(c.Delete(queue))

    def flush(self, queue: str) -> None:
        self._checked(c.Flush(queue))

    def stats(self) -> dict[str, str]:
        reply = self._checked(c.Stats())
        assert isinstance(reply, Stats)
        return reply.stats

    def dump_stats(self, *queues: str) -> dict[str, dict[str, str]]:
        reply = self._checked(c.DumpStats(queues))
        assert isinstance(reply, DumpStats)
        return reply.queues

    def version(self) -> str:
        reply = self._checked(c.Version())
        assert isinstance(reply, Version)
        return reply.text

    def status(self) -> c.ServerStatus:
        """The server's status (STATUS): UP, READONLY or QUIESCENT."""
        reply = self._checked(c.GetStatus())
        assert isinstance(reply, Message)
        return c.ServerStatus(reply.text)

    def set_status(self, status: c.ServerStatus) -> None:
        """Switch the server to `status` (an admin command when logins are on)."""
        self._checked(c.SetStatus(status))

    def flush_expired(self, queue: str) -> int:
        reply = self._checked(c.FlushExpired(queue))
        assert isinstance(reply, Count)
        return reply.n

    def _checked(self, command: c.Command) -> Reply | None:
        reply = self.request(command)
        if isinstance(reply, ErrorReply):
            error = refused(reply.reason, self.credentials.user)
            if error is not None:
                raise error
            raise ReplyError(reply.word, reply.reason)
        return reply
