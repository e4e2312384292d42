"""Put messages on queues spread over several queue servers (pymemcache underneath).

    from kestrelq.producer import Producer

    with Producer("q1:22133,q2:22133,q3:22133") as producer:   # or Producer() for KESTRELQ_SERVERS
        producer.send("jobs", b"payload")                        # returns the server that stored it

Each message goes to one server, round robin from a random start, so N servers get equal
shares. A server that refuses the connection, times out, hangs up or answers SERVER_ERROR is
skipped and the same message goes to the next one; the failed server is left out for a backoff
(0.5 s doubling up to 30 s) and tried again after it. SERVER_ERROR "object too large" is not a
failure of the server but a refusal of the message, like NOT_STORED: no backoff. A server
being drained (its STATUS is READONLY or QUIESCENT: SERVER_ERROR "server is read-only") is
left out like a failed one, and the log says it is draining, not failing. STORED from
one server is the acknowledgement: `send` returns only then (pymemcache's `set` with
`noreply=False`; its default would not wait).

A retry can duplicate a message: a `set` whose STORED was lost on the wire (the server stored
it, then the connection broke or the reply timed out) looks exactly like a `set` that never
arrived, so the producer sends it to the next server and both hold it. Delivery is
at-least-once anyway (a worker that dies before its confirm gets the message again), so
handlers are already idempotent and the duplicate is harmless; the other choice, not retrying,
would lose the messages the server did not store.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymemcache.exceptions import MemcacheClientError, MemcacheError, MemcacheServerError

from kestrelq.credentials import Credentials, memcache_client
from kestrelq.errors import KestrelqError
from kestrelq.servers import Address, Clock, Entry, Rotation, ServerList

logger = logging.getLogger(__name__)

ClientFactory = Callable[[Address], Any]

__all__ = ["NotStored", "Producer", "Unreachable"]


class Unreachable(KestrelqError):
    """No server stored the message: each one failed (connection, timeout, SERVER_ERROR)."""


class NotStored(KestrelqError):
    """Every server that answered refused the message (NOT_STORED: the queue is full, the
    message too large, or the server is shutting down)."""


class Producer:
    """Sends messages over a server list; not thread-safe (one per thread).

    Args:
        servers: a ServerList, "host:port,host:port", a list of entries or (host, port)
            addresses, or None for the environment (KESTRELQ_SERVERS, else KESTRELQ_HOST/PORT).
        credentials: login and TLS (default: kestrelq.credentials from the environment).
        connect_timeout_s, timeout_s: per server; a server past them is skipped.
        backoff_initial_s, backoff_max_s: how long a failed server is left out.
        client_factory: builds the pymemcache client for an address (tests).
    """

    def __init__(
        self,
        servers: ServerList | str | Sequence[str | Address | Entry] | None = None,
        *,
        credentials: Credentials | None = None,
        connect_timeout_s: float = 3.0,
        timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        client_factory: ClientFactory | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.servers = ServerList.of(servers)
        self.credentials = credentials if credentials is not None else Credentials.from_env()
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.rotation = Rotation(
            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s, clock=clock, rng=rng
        )
        self._client_factory = client_factory or self._default_client
        self._clients: dict[Address, Any] = {}

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def send(self, queue: str, data: bytes, expire_s: int = 0) -> Address:
        """Store `data` on `queue` on one server; the server that said STORED.

        Unreachable if every server failed, NotStored if those that answered refused it;
        CredentialsRefused (not retried) if a server refused the login.
        """
        addresses = self.servers.addresses()
        errors: list[str] = []
        refused: list[str] = []
        for address in self.rotation.order(addresses):
            try:
                stored = self._client(address).set(queue, data, expire=expire_s, noreply=False)
            except MemcacheClientError:
                raise  # CLIENT_ERROR: this message is bad for every server; retrying cannot help
            except MemcacheServerError as exc:
                if _draining(exc):
                    self._draining(address, exc)
                    errors.append(f"{_where(address)} ({_reason(exc)})")
                    continue
                if not _too_large(exc):
                    self._failed(address, exc)
                    errors.append(f"{_where(address)} ({_reason(exc)})")
                    continue
                # SERVER_ERROR "object too large" refuses this message, not the server: the
                # server is fine for every other message, so no backoff. It hung up (it does
                # not read the data it refused), so only the client goes. Another server may
                # allow larger items: try it, as after NOT_STORED.
                self._drop_client(address)
                refused.append(f"{_where(address)} ({_reason(exc)})")
                continue
            except (OSError, MemcacheError) as exc:
                self._failed(address, exc)
                errors.append(f"{_where(address)} ({_reason(exc)})")
                continue
            if self.rotation.succeeded(address):
                logger.info("queue server %s is back", _where(address))
            if stored:
                return address
            # NOT_STORED is this server's queue (full, shutting down): another may take it.
            refused.append(_where(address))
        if refused:
            raise NotStored(f"{', '.join(refused)} refused a message for {queue!r} (NOT_STORED: "
                            "the queue is full, the message too large, or the server is shutting "
                            "down)" + (f"; {'; '.join(errors)}" if errors else ""))  # fmt: skip
        if not addresses:
            raise Unreachable(f"no queue server: {self.servers} resolves to no address")
        raise Unreachable("cannot reach the queue at " + "; ".join(errors))

    def _client(self, address: Address) -> Any:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._client_factory(address)
        return client

    def _drop_client(self, address: Address) -> None:
        client = self._clients.pop(address, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken socket may fail; it is gone either way
                pass

    def _failed(self, address: Address, exc: BaseException) -> None:
        self._drop_client(address)
        delay_s = self.rotation.failed(address)
        logger.warning("queue server %s failed (%s); leaving it out for %.1fs",
                       _where(address), _reason(exc), delay_s)  # fmt: skip

    def _draining(self, address: Address, exc: MemcacheServerError) -> None:
        # The server closed the connection after its refusal (as it does for every status
        # refusal); the backoff brings it back once an operator puts it UP again.
        self._drop_client(address)
        delay_s = self.rotation.failed(address)
        logger.info("queue server %s is draining (%s); leaving it out for %.1fs",
                    _where(address), _reason(exc), delay_s)  # fmt: skip

    def _default_client(self, address: Address) -> Any:
        return memcache_client(
            address,
            self.credentials,
            connect_timeout=self.connect_timeout_s,
            timeout=self.timeout_s,
            no_delay=True,
        )


def _where(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _too_large(exc: MemcacheServerError) -> bool:
    """Whether a SERVER_ERROR is the refusal of an item over the server's size limit."""
    return _text(exc).startswith("object too large")


def _draining(exc: MemcacheServerError) -> bool:
    """Whether a SERVER_ERROR is a drained server's refusal (STATUS READONLY or QUIESCENT)."""
    return _text(exc).startswith(("server is read-only", "server is quiescent"))


def _text(exc: MemcacheServerError) -> str:
    reason = exc.args[0] if exc.args else b""
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason).strip()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, MemcacheServerError) and exc.args and isinstance(exc.args[0], bytes):
        return exc.args[0].decode("utf-8", "replace")  # pymemcache keeps the reply's bytes
    return str(exc) or type(exc).__name__
