"""`kestrelq serve`, `kestrelq stats`, `kestrelq peek`, `kestrelq drain`, `kestrelq undrain`."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from collections.abc import Callable, Collection
from typing import Any

from kestrelq.client import DEFAULT_HOST, DEFAULT_PORT, Client
from kestrelq.credentials import EXIT_CREDENTIALS, Credentials
from kestrelq.errors import ConfigError, CredentialsRefused, JournalError, KestrelqError
from kestrelq.protocol.commands import ServerStatus
from kestrelq.server import config as config_mod
from kestrelq.servers import ServerList, parse_entry, servers_from_options

logger = logging.getLogger(__name__)

# The dead-letter queue's name when none is configured: the server's (max_deliveries) and the
# workers' default alike.
DEAD_SUFFIX = "_dead"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the queue server",
        description=(
            "Run the queue server. Every option can also come from the config file "
            "([server] section) or from KESTRELQ_<OPTION> environment variables; the command "
            "line wins over the environment, which wins over the file. The TLS files are "
            "KESTRELQ_SERVER_TLS_CERT/_KEY/_CA (KESTRELQ_TLS_* are the clients')."
        ),
    )
    serve.add_argument("--config", dest="config_file", help="TOML config file (KESTRELQ_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 22133)")
    serve.add_argument("--data-dir", dest="data_dir", help="journal directory (./var/queue)")
    serve.add_argument(
        "--fsync",
        help="always (reply after fsync; default), never, or a period in milliseconds",
    )
    serve.add_argument(
        "--sync-reads",
        dest="sync_reads",
        # --no-sync-reads too, so the command line can turn off what the environment or the
        # file turned on; unset (None) leaves it to them.
        action=argparse.BooleanOptionalAction,
        help="with --fsync always, reads (get, /open, /close, /abort) wait for their fsync "
        "too; by default their records are fsynced with the next group commit",
    )
    serve.add_argument("--max-open-reads", dest="max_open_reads", type=int)
    serve.add_argument("--max-connections", dest="max_connections", type=int)
    serve.add_argument(
        "--max-queues",
        dest="max_queues",
        type=int,
        help="refuse creating more queues than this (default 10000, 0 = no limit)",
    )
    serve.add_argument("--max-item-bytes", dest="max_item_bytes", type=int)
    serve.add_argument(
        "--max-pending-bytes",
        dest="max_pending_bytes",
        type=int,
        help="bytes of data blocks still arriving, all connections together (256 MiB)",
    )
    serve.add_argument(
        "--read-timeout-s",
        dest="read_timeout_s",
        type=float,
        help="close a connection whose command is not whole this long after its first byte, "
        "or whose replies stay unread this long (60; 0 = never)",
    )
    serve.add_argument(
        "--idle-timeout-s",
        dest="idle_timeout_s",
        type=float,
        help="close a connection idle this long between commands (0 = never, the default; "
        "a blocked get is not idle)",
    )
    serve.add_argument(
        "--tcp-keepalive-s",
        dest="tcp_keepalive_s",
        type=float,
        help="probe a client silent this long; 3 unanswered probes close its connection and "
        "give its open reads back (60; 0 = the kernel's default, usually off)",
    )
    serve.add_argument(
        "--salvage",
        action="store_const",
        const=True,
        help="start even if a journal is damaged mid-file, skipping the damaged bytes",
    )
    _security_options(serve)
    metrics = serve.add_argument_group("metrics", "Prometheus metrics (docs/metrics.md)")
    metrics.add_argument(
        "--metrics-port", dest="metrics_port", type=int, metavar="N",
        help="serve /metrics on this port (0, the default: off)",
    )  # fmt: skip
    metrics.add_argument(
        "--metrics-host", dest="metrics_host", metavar="ADDR",
        help="the metrics port's address (default 127.0.0.1)",
    )  # fmt: skip
    metrics.add_argument(
        "--metrics-token-file", dest="metrics_token_file", metavar="FILE",
        help="scrapers must send 'Authorization: Bearer <the file's text>'",
    )  # fmt: skip
    serve.set_defaults(func=_serve)

    for name, helptext, func in (
        ("stats", "print the server's stats, per queue", _stats),
        ("peek", "show the head item of a queue without removing it", _peek),
    ):
        sub = subparsers.add_parser(name, help=helptext, description=helptext)
        # Found as the worker and send.py find it: the option, else the environment (in the
        # compose stack KESTRELQ_HOST=queue), else the default.
        sub.add_argument("--host", help=f"server address (KESTRELQ_HOST, else {DEFAULT_HOST})")
        sub.add_argument("--port", type=int, help=f"(KESTRELQ_PORT, else {DEFAULT_PORT})")
        sub.add_argument(
            "--servers",
            metavar="HOST:PORT,...",
            help="several servers (KESTRELQ_SERVERS): each one, and for stats the sum per queue",
        )
        sub.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        if name == "peek":
            sub.add_argument("queue")
        else:
            sub.add_argument(
                "--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C"
            )
            sub.add_argument(
                "--interval", type=_positive_seconds, default=2.0, metavar="S",
                help="seconds between redraws with --watch (default 2)",
            )  # fmt: skip
        sub.set_defaults(func=func)

    drain = subparsers.add_parser(
        "drain",
        help="take a server out: READONLY, then wait until its queues are empty",
        description=(
            "Switch the server to READONLY (producers send to the other servers, workers keep "
            "reading it), then wait until every queue on it is empty and no read is open, and "
            "say so: the server can then be stopped. The items of dead-letter queues (QUEUE_dead "
            "beside QUEUE, or given with --dead-letter) are not waited for, since no worker "
            "reads them: they are reported. Logs in and speaks TLS as KESTRELQ_USER, "
            "KESTRELQ_PASSWORD and KESTRELQ_TLS_* say (an admin user when logins are on). "
            "The status stays READONLY, across restarts too, until `kestrelq undrain`."
        ),
    )
    drain.add_argument("server", metavar="HOST:PORT")
    drain.add_argument("--timeout", type=float, default=5.0, help="seconds per request (5)")
    drain.add_argument(
        "--wait-s",
        type=float,
        default=0.0,
        help="give up (exit 1, the server stays READONLY) after this long (0: wait for ever)",
    )
    drain.add_argument(
        "--poll-s", type=float, default=1.0, help="seconds between looks at its queues (1)"
    )
    drain.add_argument(
        "--dead-letter",
        action="append",
        default=[],
        metavar="QUEUE",
        help="a dead-letter queue not named QUEUE_dead, not waited for (repeat)",
    )
    drain.set_defaults(func=_drain)
    undrain = subparsers.add_parser(
        "undrain",
        help="put a drained server back: UP",
        description="Switch the server back to UP: producers send to it again.",
    )
    undrain.add_argument("server", metavar="HOST:PORT")
    undrain.add_argument("--timeout", type=float, default=5.0, help="seconds per request (5)")
    undrain.set_defaults(func=_undrain)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return seconds


_METRICS_KEYS = ("metrics_port", "metrics_host", "metrics_token_file")
_SECURITY_KEYS = ("plain", "auth_file", "admin_users", "enable_shutdown", "tls_port", "tls_cert",
                  "tls_key", "tls_ca", "tls_verify", "tls_handshake_timeout_s")  # fmt: skip


def _security_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("security", "authentication and TLS (docs/security.md)")
    group.add_argument(
        "--auth-file", dest="auth_file", metavar="FILE",
        help="user:password lines; clients must log in with a set of 'user password' first",
    )  # fmt: skip
    group.add_argument(
        "--admin-users", dest="admin_users", metavar="A,B",
        help="users that may flush_all, flush, delete, reload, flush_all_expired, shutdown",
    )  # fmt: skip
    group.add_argument(
        "--enable-shutdown", dest="enable_shutdown", action="store_const", const=True,
        help="obey the shutdown command (refused by default, as memcached's -A)",
    )  # fmt: skip
    group.add_argument(
        "--no-plain", dest="plain", action="store_const", const=False,
        help="no plain listener on --port: TLS only",
    )  # fmt: skip
    group.add_argument("--tls-port", dest="tls_port", type=int, help="TLS listener port (off)")
    group.add_argument("--tls-cert", dest="tls_cert", metavar="PEM", help="server certificate")
    group.add_argument("--tls-key", dest="tls_key", metavar="PEM", help="its private key")
    group.add_argument("--tls-ca", dest="tls_ca", metavar="PEM", help="CA for client certs")
    group.add_argument(
        "--tls-verify", dest="tls_verify", choices=["none", "optional", "required"],
        help="client certificates: none (default), optional, required (mutual TLS)",
    )  # fmt: skip
    group.add_argument(
        "--tls-handshake-timeout", dest="tls_handshake_timeout_s", type=float, metavar="S",
        help="drop a TLS client that has not finished its handshake after S seconds (10)",
    )  # fmt: skip


def _serve(args: argparse.Namespace) -> int:
    from kestrelq.server.server import run

    keys = ("config_file", "host", "port", "data_dir", "fsync", "sync_reads", "max_open_reads",
            "max_connections", "max_queues", "max_item_bytes", "max_pending_bytes",
            "read_timeout_s", "idle_timeout_s", "tcp_keepalive_s", "salvage", *_SECURITY_KEYS,
            *_METRICS_KEYS)  # fmt: skip
    try:
        cfg = config_mod.load({k: getattr(args, k) for k in keys})
        return run(cfg)
    except (ConfigError, JournalError) as exc:
        logger.critical("%s", exc)
        return 2
    except OSError as exc:
        logger.critical("cannot start: %s", exc)
        return 2


def _with_client(args: argparse.Namespace, command: Callable[[Client], int]) -> int:
    """Run a client command; a bad setting exits 2, an unreachable or refusing server 1,
    refused credentials EXIT_CREDENTIALS."""
    try:
        with Client(args.host, args.port, args.timeout, Credentials.from_env()) as client:
            return command(client)
    except ConfigError as exc:
        print(f"kestrelq: {exc}", file=sys.stderr)
        return 2
    except CredentialsRefused as exc:
        print(f"kestrelq: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_CREDENTIALS
    except OSError as exc:
        print(f"kestrelq: cannot reach {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KestrelqError as exc:
        print(f"kestrelq: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


def format_stats(server: dict[str, str], queues: dict[str, dict[str, str]]) -> str:
    """A server summary line and a table of queues."""
    out = [
        f"kestrelq {server.get('version', '?')}  up {server.get('uptime', '?')} s  "
        f"connections {server.get('curr_connections', '?')}  "
        f"items {server.get('curr_items', '?')}  fsync {server.get('fsync_policy', '?')} "
        f"({server.get('fsyncs', '?')} fsyncs)  journals {server.get('journal_bytes', '?')} B"
    ]
    return "\n".join(out + format_queues(queues))


# Summed over servers; the ages are each the largest of the servers' (the longest wait).
_SUMMED = ("items", "bytes", "mem_items", "open_transactions", "waiters", "total_items",
           "dead_lettered")  # fmt: skip
_LARGEST = ("age", "oldest_age_ms")


def sum_queues(per_server: list[dict[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    """Each queue's figures added up over servers (ages: the largest)."""
    total: dict[str, dict[str, int]] = {}
    for queues in per_server:
        for name, stats in queues.items():
            row = total.setdefault(name, dict.fromkeys((*_SUMMED, *_LARGEST), 0))
            for key in _SUMMED:
                row[key] += _int(stats.get(key, "0"))
            for key in _LARGEST:
                row[key] = max(row[key], _int(stats.get(key, "0")))
    return {name: {k: str(v) for k, v in row.items()} for name, row in total.items()}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def format_queues(queues: dict[str, dict[str, str]]) -> list[str]:
    """A table of queues, one line each (the README defines each column)."""
    out: list[str] = []
    header = ("queue", "items", "bytes", "in_memory", "open", "waiters", "age_ms", "oldest_ms",
              "total", "dead")  # fmt: skip
    keys = ("items", "bytes", "mem_items", "open_transactions", "waiters", "age", "oldest_age_ms",
            "total_items", "dead_lettered")  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    for name in sorted(queues):
        rows.append((name, *(queues[name].get(k, "0") for k in keys)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(cells))
    if len(rows) == 1:
        out.append("(no queues)")
    return out


def _each_server(args: argparse.Namespace, command: Callable[[Client], int]) -> int:
    """Run a client command on every listed server, under a heading each; 1 if one of them
    could not be reached (the others are still shown), else the worst code. One server (of
    --host/--port, of the variables, or a KESTRELQ_SERVERS of one) is shown without a heading."""
    try:
        entries = servers_from_options(args.servers, args.host, args.port, os.environ)
    except ConfigError as exc:
        print(f"kestrelq: {exc}", file=sys.stderr)
        return 2
    # --host/--port win over KESTRELQ_SERVERS (servers_from_options): then it is one server.
    from_env = bool(os.environ.get("KESTRELQ_SERVERS")) and not (args.host or args.port)
    listed = bool(args.servers) or from_env
    if not listed:
        args.host, args.port = entries[0].host, entries[0].port
        return _with_client(args, command)
    # A list, even of one name: a name such as swarm's `tasks.queue` stands for every replica.
    addresses = ServerList(entries).addresses()
    if not addresses:
        print("kestrelq: no server address: the listed names resolve to none", file=sys.stderr)
        return 1
    if not args.servers and len(addresses) == 1:
        args.host, args.port = addresses[0]
        return _with_client(args, command)
    code = 0
    for host, port in addresses:
        args.host, args.port = host, port
        print(f"== {host}:{port}", flush=True)
        code = max(code, _with_client(args, command))
    return code


def _stats(args: argparse.Namespace) -> int:
    if not args.watch:
        return _stats_once(args)
    try:
        while True:
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # home and clear: a redraw, not a scroll
            print(f"{time.strftime('%H:%M:%S')}  every {args.interval:g} s, Ctrl-C to stop")
            # A copy: one round fills in --host/--port, which the next must not see as given.
            code = _stats_once(copy.copy(args))
            if code == 2:
                return code  # a bad setting: no round would do better
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _stats_once(args: argparse.Namespace) -> int:
    per_server: list[dict[str, dict[str, str]]] = []

    def show(client: Client) -> int:
        queues = client.dump_stats()
        per_server.append(queues)
        print(format_stats(client.stats(), queues))
        return 0

    code = _each_server(args, show)
    if code != 2 and (args.servers or len(per_server) > 1):
        answered = len(per_server)
        print(f"== every server ({answered} answered)")
        print("\n".join(format_queues(sum_queues(per_server))))
    return code


def _peek(args: argparse.Namespace) -> int:
    def show(client: Client) -> int:
        item = client.get(f"{args.queue}/peek")
        if item is None:
            print(f"{args.queue}: empty")
            return 0
        print(f"{args.queue}: head item, {len(item.data)} bytes, flags {item.flags}")
        sys.stdout.write(item.data.decode(errors="replace") + "\n")
        return 0

    return _each_server(args, show)


def _one_server(args: argparse.Namespace) -> int | None:
    """Set args.host and args.port from HOST:PORT; 2 (after saying why) if it is bad."""
    try:
        entry = parse_entry(args.server)
    except ConfigError as exc:
        print(f"kestrelq: {exc}", file=sys.stderr)
        return 2
    args.host, args.port = entry.host, entry.port
    return None


def _undrain(args: argparse.Namespace) -> int:
    def up(client: Client) -> int:
        client.set_status(ServerStatus.UP)
        print(f"{args.host}:{args.port}: UP: taking messages again", flush=True)
        return 0

    return _one_server(args) or _with_client(args, up)


def is_dead_letter(name: str, named: Collection[str] = (), queues: Collection[str] = ()) -> bool:
    """A dead-letter queue: one named, or `<queue>_dead` (the server's and the workers'
    default) beside its `<queue>`. A `_dead` name alone says nothing: it may be a queue of
    its own that workers read."""
    return name in named or (
        name.endswith(DEAD_SUFFIX) and name.removesuffix(DEAD_SUFFIX) in queues
    )


def _not_empty(
    queues: dict[str, dict[str, str]], dead_letters: Collection[str] = ()
) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """The queues still holding items or open reads, {name: (items, open reads)}, and apart
    from them the dead-letter queues holding items, {name: items}.

    A dead-letter queue's items are not waited for: no worker reads it, so a drain waiting for
    them would never end. Its items stay in the server's journal across a stop. Its open
    reads are (a `kestrelq requeue` moving them): stopping the server would hand them back.
    """
    left: dict[str, tuple[int, int]] = {}
    dead: dict[str, int] = {}
    for name, stats in queues.items():
        pair = (_int(stats.get("items", "0")), _int(stats.get("open_transactions", "0")))
        if is_dead_letter(name, dead_letters, queues):
            if pair[0]:
                dead[name] = pair[0]
            if pair[1]:
                left[name] = (0, pair[1])
        elif pair != (0, 0):
            left[name] = pair
    return left, dead


def _say_dead_letters(args: argparse.Namespace, dead: dict[str, int]) -> None:
    where = f"{args.host}:{args.port}"
    held = ", ".join(f"{name} {n}" for name, n in sorted(dead.items()))
    first = min(dead)
    back = first.removesuffix(DEAD_SUFFIX) if first.endswith(DEAD_SUFFIX) else "QUEUE"
    print(f"{where}: {sum(dead.values())} items left in dead-letter queues ({held}), not waited "
          "for: no worker reads them. They stay in its journal when it is stopped. To hand them "
          "to the workers first (a READONLY server refuses the move):\n"
          f"  kestrelq undrain {where} && kestrelq requeue {first} {back} --host {args.host} "
          f"--port {args.port} && kestrelq drain {where}", flush=True)  # fmt: skip


def _drain(args: argparse.Namespace) -> int:
    code = _one_server(args)
    if code is not None:
        return code
    where = f"{args.host}:{args.port}"
    started = time.monotonic()

    def readonly(client: Client) -> int:
        client.set_status(ServerStatus.READONLY)
        print(f"{where}: READONLY: producers send elsewhere, workers empty it", flush=True)
        return 0

    code = _with_client(args, readonly)
    if code:
        return code
    shown = None
    left: dict[str, tuple[int, int]] = {}
    dead: dict[str, int] = {}

    def look(client: Client) -> int:
        waited, held = _not_empty(client.dump_stats(), args.dead_letter)
        left.update(waited)
        dead.update(held)
        return 0

    while True:
        left.clear()
        dead.clear()

        # A failed look (the server restarting, a timeout) is said and tried again: the
        # drain is the server's status, which the restart keeps.
        if _with_client(args, look) == 0 and not left:
            took = time.monotonic() - started
            print(f"{where}: drained in {took:.1f} s: every queue empty, no read open; it can "
                  "be stopped (`kestrelq undrain` puts it back)", flush=True)  # fmt: skip
            if dead:
                _say_dead_letters(args, dead)
            return 0
        if left and left != shown:
            shown = dict(left)
            items = sum(n for n, _ in left.values())
            reads = sum(o for _, o in left.values())
            names = ", ".join(sorted(left)[:5]) + (", ..." if len(left) > 5 else "")
            print(f"{where}: {items} items and {reads} open reads left in {len(left)} queues "
                  f"({names})", flush=True)  # fmt: skip
        if args.wait_s and time.monotonic() - started > args.wait_s:
            print(f"kestrelq: {where} not drained after {args.wait_s:g} s; it stays READONLY",
                  file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(args.poll_s)
