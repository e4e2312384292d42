"""Which queue servers a client uses, and in what order it tries them.

Queue servers never talk to each other (Kestrel's model): producers spread messages over all of
them, and every worker reads from every one. So each client takes a server list:

    KESTRELQ_SERVERS=q1:22133,q2:22133,tasks.queue    # an entry without a port means 22133
    KESTRELQ_HOST=q1 KESTRELQ_PORT=22133              # still works: a list of one

Every command reads its --servers/--host/--port and these variables through one function,
`servers_from_options`, so `work`, `stats`, `peek`, `requeue` and `dashboard` agree on which wins.

An entry may be a DNS name that resolves to several addresses (Swarm's `tasks.<service>`, a
Kubernetes headless service): `ServerList` resolves it again every `refresh_s`, so servers that
come and go are picked up. A name that stops resolving keeps its last addresses (a DNS hiccup
must not empty the list); one that never resolved counts for nothing until it does.

`Rotation` is the producers' choice of server: round robin from a random start (exactly even
over the servers that answer), skipping a server that failed until its backoff has passed.
Everything here but `resolve_address` is pure, with the clock and the resolver injected, and is
tested directly.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kestrelq.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 22133
DEFAULT_REFRESH_S = 30.0

Address = tuple[str, int]
Resolver = Callable[[str, int], list[Address]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Entry:
    """One server as configured: a host name or address, and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_entry(text: str) -> Entry:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; ConfigError naming the entry if bad."""
    raw = text.strip()
    host, port_text = raw, ""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or (raw[end + 1 :] and not raw[end + 1 :].startswith(":")):
            raise ConfigError(f"server {text!r}: write an IPv6 address as [addr] or [addr]:port")
        host, port_text = raw[1:end], raw[end + 2 :]
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif ":" in raw:
        raise ConfigError(f"server {text!r}: write an IPv6 address as [addr]:port")
    if not host or any(ch.isspace() for ch in host):
        raise ConfigError(f"server {text!r} has no host name")
    if not port_text:
        return Entry(host, DEFAULT_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"server {text!r}: the port must be a number from 1 to 65535")
    return Entry(host, int(port_text))


def parse_servers(text: str) -> list[Entry]:
    """A comma-separated server list (duplicates dropped, order kept); ConfigError if empty."""
    entries: list[Entry] = []
    for part in text.split(","):
        if not part.strip():
            continue
        entry = parse_entry(part)
        if entry not in entries:
            entries.append(entry)
    if not entries:
        raise ConfigError(f"the server list {text!r} names no server")
    return entries


def servers_from_env(environ: Mapping[str, str] | None = None) -> list[Entry]:
    """KESTRELQ_SERVERS, else KESTRELQ_HOST/KESTRELQ_PORT as a list of one, else the default.

    Both at once is a ConfigError: which one was meant cannot be guessed, and guessing wrong
    would send messages where nobody reads them.
    """
    env = os.environ if environ is None else environ
    listed = env.get("KESTRELQ_SERVERS", "").strip()
    host = env.get("KESTRELQ_HOST", "")
    port = env.get("KESTRELQ_PORT", "")
    if listed:
        if host or port:
            raise ConfigError(
                "set KESTRELQ_SERVERS or KESTRELQ_HOST/KESTRELQ_PORT, not both "
                "(KESTRELQ_SERVERS=host1:port,host2:port names every server)"
            )
        return parse_servers(listed)
    return [single_server(host, port)]


def servers_from_options(
    servers: str | None, host: str | None, port: int | None, environ: Mapping[str, str]
) -> list[Entry]:
    """The server list a command's --servers or --host/--port name, else the environment's.

    The command line wins over the environment: a rendered `--servers` list is not undone by an
    image's KESTRELQ_HOST, nor `--host` by a KESTRELQ_SERVERS. `--host` alone takes its port
    from KESTRELQ_PORT and `--port` alone its host from KESTRELQ_HOST, as the options' help
    says. Both kinds on one level (two options, or two variables) is a ConfigError: which one
    was meant cannot be guessed.
    """
    if servers:
        if host or port is not None:
            raise ConfigError("--servers or --host/--port, not both")
        return parse_servers(servers)
    if host or port is not None:
        # `is not None`: --port 0 is refused by single_server, not taken for "no --port".
        return [single_server(host or environ.get("KESTRELQ_HOST"),
                              environ.get("KESTRELQ_PORT") if port is None else port)]  # fmt: skip
    return servers_from_env(environ)


def single_server(host: str | None, port: str | int | None) -> Entry:
    """The list of one that --host/--port or KESTRELQ_HOST/KESTRELQ_PORT name."""
    try:
        # An empty variable means the default; a port of 0 does not (it is refused below).
        number = DEFAULT_PORT if port is None or port == "" else int(port)
    except ValueError:
        raise ConfigError(f"KESTRELQ_PORT must be a number, not {port!r}") from None
    if not 0 < number < 65536:
        raise ConfigError(f"the port must be from 1 to 65535, not {number}")
    return Entry(host or DEFAULT_HOST, number)


def resolve_address(host: str, port: int) -> list[Address]:
    """Every TCP address `host` resolves to (OSError if it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(str(info[4][0]), port) for info in infos]


def _is_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


class ServerList:
    """The configured entries, resolved to addresses; re-resolved every `refresh_s`.

    A name that resolves to one address is kept as the name (so TLS checks the certificate
    against it and the system resolver follows it); a name with several addresses becomes those
    addresses, sorted so that the order does not move with DNS round robin. Addresses appear
    once, in the order of the entries.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        resolver: Resolver = resolve_address,
        clock: Clock = time.monotonic,
    ) -> None:
        if not entries:
            raise ConfigError("the server list names no server")
        self.entries = list(entries)
        self.refresh_s = refresh_s
        self._resolver = resolver
        self._clock = clock
        self._known: dict[Entry, list[Address]] = {}
        self._resolved_at: float | None = None
        self._addresses: list[Address] = []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerList:
        return cls(servers_from_env(environ))

    @classmethod
    def of(cls, servers: ServerList | str | Sequence[str | Address | Entry] | None) -> ServerList:
        """A ServerList from what a caller may hold: a list, a string, addresses, entries."""
        if isinstance(servers, ServerList):
            return servers
        if servers is None:
            return cls.from_env()
        if isinstance(servers, str):
            return cls(parse_servers(servers))
        entries: list[Entry] = []
        for s in servers:
            if isinstance(s, Entry):
                entries.append(s)
            elif isinstance(s, str):
                entries.append(parse_entry(s))
            else:
                entries.append(Entry(s[0], int(s[1])))
        return cls(entries)

    def __str__(self) -> str:
        return ",".join(str(e) for e in self.entries)

    def addresses(self) -> list[Address]:
        """The current addresses, resolving again when the last resolution is `refresh_s` old."""
        now = self._clock()
        if self._resolved_at is None or now - self._resolved_at >= self.refresh_s:
            self._resolved_at = now
            for entry in self.entries:
                self._resolve(entry)
            out: list[Address] = []
            for entry in self.entries:
                for address in self._known.get(entry, []):
                    if address not in out:
                        out.append(address)
            self._addresses = out
        return list(self._addresses)

    def _resolve(self, entry: Entry) -> None:
        if _is_literal(entry.host):
            self._known[entry] = [(entry.host, entry.port)]
            return
        try:
            found = sorted(set(self._resolver(entry.host, entry.port)))
        except OSError as exc:
            # Keep what it resolved to before: a DNS hiccup must not drop live servers.
            logger.warning("cannot resolve queue server %s (%s); keeping %d known address(es)",
                           entry, exc, len(self._known.get(entry, [])))  # fmt: skip
            return
        if len(found) > 1:
            if found != self._known.get(entry):
                logger.info("queue server %s resolves to %d addresses", entry, len(found))
            self._known[entry] = found
        else:
            self._known[entry] = [(entry.host, entry.port)] if found else []


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    """Capped exponential delay after `failures` failures in a row (1-based), without jitter."""
    return float(min(max_s, initial_s * (2 ** max(0, min(failures, 64) - 1))))


@dataclass(slots=True)
class _Health:
    failures: int = 0
    retry_at: float = 0.0


class Rotation:
    """Round robin from a random start over the servers that answer; failed ones wait out a
    backoff (doubling per failure in a row, `backoff_initial_s` up to `backoff_max_s`), then are
    tried again with the next message.

    `order(addresses)` is the order in which to try servers for one message: the next one in
    the rotation, then the other available ones, then (last resort, rather than refusing a
    message while one might be back) those still in backoff, soonest first.
    """

    def __init__(
        self,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._next = (rng or random.Random()).randrange(1 << 30)
        self._health: dict[Address, _Health] = {}

    def available(self, address: Address) -> bool:
        health = self._health.get(address)
        return health is None or health.retry_at <= self._clock()

    def order(self, addresses: Sequence[Address]) -> list[Address]:
        if not self._health:  # the common case, on every message: every server is up
            if not addresses:
                return []
            start = self._next % len(addresses)
            self._next += 1
            return [*addresses[start:], *addresses[:start]]
        now = self._clock()
        up = [a for a in addresses if a not in self._health or self._health[a].retry_at <= now]
        down = sorted((a for a in addresses if a not in up), key=lambda a: self._health[a].retry_at)
        if not up:
            return down
        start = self._next % len(up)
        self._next += 1
        return up[start:] + up[:start] + down

    def failed(self, address: Address) -> float:
        """Count a failure; the seconds the server is now left out for."""
        health = self._health.setdefault(address, _Health())
        health.failures += 1
        delay_s = backoff_s(health.failures, self.backoff_initial_s, self.backoff_max_s)
        health.retry_at = self._clock() + delay_s
        return delay_s

    def succeeded(self, address: Address) -> bool:
        """Forget its failures; True if it had failed before (it is back)."""
        return self._health.pop(address, None) is not None
