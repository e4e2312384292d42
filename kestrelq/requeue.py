"""Moving items from one queue to another without losing any: `kestrelq requeue` and the
dashboard's dead-letter actions.

    moved = requeue("work_dead", "work", servers="q1:22133,q2:22133", max_items=100)

Rules:

1. One item at a time, on one connection per server: a reliable read on SOURCE
   (`get SOURCE/open`), a `set` on DEST on the same server, waited for (STORED), and only then
   the read is confirmed (`get SOURCE/close`). Killed anywhere in between, the connection drops
   and the server gives the open read back to SOURCE's head: nothing is lost, and the item is
   at most in both queues once (a duplicate, never a loss).
2. Each server's items stay on that server: queue servers never talk to each other, and its
   workers already read from it.
3. A DEST that refuses the item (NOT_STORED, an error) stops the move on that server: the open
   read is aborted, so the item is back at SOURCE's head, and the refusal is reported.
4. At most the items SOURCE held when the move started (and at most `max_items` over all the
   servers): requeueing dead letters to a queue whose handler fails them again sends them back
   to SOURCE, and without that bound the move would chase them for ever.

`drop_head` is the dashboard's "drop": the head item is removed only if it is still the one
the user saw (its digest), else it is given back untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from kestrelq.client import Client, Value
from kestrelq.credentials import Credentials
from kestrelq.errors import ConfigError, CredentialsRefused, KestrelqError
from kestrelq.servers import Address, Entry, ServerList


@dataclass(slots=True)
class ServerResult:
    """What a move did on one server: items moved, and why it stopped early (if it did)."""

    address: Address
    moved: int = 0
    error: str = ""


@dataclass(slots=True)
class RequeueResult:
    source: str
    dest: str
    servers: list[ServerResult] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(s.moved for s in self.servers)

    @property
    def errors(self) -> list[str]:
        return [f"{_where(s.address)}: {s.error}" for s in self.servers if s.error]


def _where(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def digest(data: bytes) -> str:
    """A short name for one message's content, for 'is this still the item the user saw'."""
    return hashlib.sha256(data).hexdigest()[:16]


def requeue(
    source: str,
    dest: str,
    *,
    servers: ServerList | str | Sequence[str | Address | Entry] | None = None,
    credentials: Credentials | None = None,
    max_items: int | None = None,
    timeout_s: float = 5.0,
) -> RequeueResult:
    """Move items from `source` to `dest` on every server (rules above). A server that cannot
    be reached is reported in the result, and the others are still moved; refused
    credentials raise CredentialsRefused."""
    if source == dest:
        raise ConfigError(f"requeue {source} to itself would move nothing")
    if max_items is not None and max_items < 0:
        raise ConfigError("--max must be 0 or more")
    creds = credentials if credentials is not None else Credentials.from_env()
    result = RequeueResult(source, dest)
    left = max_items
    for address in ServerList.of(servers).addresses():
        done = ServerResult(address)
        result.servers.append(done)
        if left == 0:
            continue
        try:
            with Client(address[0], address[1], timeout_s, creds) as client:
                _move(client, source, dest, left, done)
        except CredentialsRefused:
            raise  # the same login everywhere: the other servers would refuse it too
        except (OSError, KestrelqError) as exc:
            # A refusal already said why; the connection's end after it is no news.
            done.error = done.error or str(exc) or type(exc).__name__
        if left is not None:
            left -= done.moved
    return result


def _move(client: Client, source: str, dest: str, limit: int | None, done: ServerResult) -> None:
    held = client.dump_stats(source).get(source, {})
    budget = int(held.get("items", "0"))
    if limit is not None:
        budget = min(budget, limit)
    while done.moved < budget:
        item = client.get(f"{source}/open")
        if item is None:
            return
        if not _put(client, dest, item, done):
            client.get(f"{source}/abort")
            return
        client.get(f"{source}/close")
        done.moved += 1


def _put(client: Client, dest: str, item: Value, done: ServerResult) -> bool:
    try:
        stored = client.set(dest, item.data, item.flags)
    except KestrelqError as exc:
        done.error = f"{dest} refused an item: {exc}"
        return False
    if not stored:
        done.error = f"{dest} refused an item (NOT_STORED: full, or read-only)"
    return stored


def drop_head(client: Client, queue: str, expected_digest: str) -> bool:
    """Remove `queue`'s head item if its digest is `expected_digest`; True if it was removed.

    A reliable read first, so that a head that changed meanwhile (a requeue, another user) is
    given back, not dropped.
    """
    item = client.get(f"{queue}/open")
    if item is None:
        return False
    if digest(item.data) != expected_digest:
        client.get(f"{queue}/abort")
        return False
    client.get(f"{queue}/close")
    return True
