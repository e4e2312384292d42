"""`kestrelq dashboard` and `kestrelq requeue`."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from typing import Any

from kestrelq.credentials import EXIT_CREDENTIALS, Credentials
from kestrelq.errors import ConfigError, CredentialsRefused
from kestrelq.requeue import requeue
from kestrelq.servers import ServerList, servers_from_options

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8081"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    move = subparsers.add_parser(
        "requeue",
        help="move items from one queue to another, losing none (e.g. dead letters back)",
        description=(
            "Move the items SOURCE holds now to DEST, on every server: a reliable read on "
            "SOURCE, a set on DEST, then the read is confirmed, so a move cut short (even by "
            "kill -9) loses nothing and leaves at most one item in both. The servers: "
            "--servers, --host/--port, or KESTRELQ_SERVERS (KESTRELQ_HOST/_PORT); login and "
            "TLS from KESTRELQ_USER, KESTRELQ_PASSWORD[_FILE], KESTRELQ_TLS_*."
        ),
    )
    move.add_argument("source")
    move.add_argument("dest")
    move.add_argument("--max", dest="max_items", type=int, help="move at most N items in all")
    _server_options(move)
    move.set_defaults(func=_requeue)

    board = subparsers.add_parser(
        "dashboard",
        help="the web dashboard: queues, workers, dead letters",
        description=(
            "Serve the dashboard: every queue of every server (KESTRELQ_SERVERS), the programs "
            "of the supervisords named with --supervisor, the dead-letter queues with actions. "
            "HTTP basic auth, user kestrelq, password KESTRELQ_SUPERVISOR_PASSWORD (the status "
            "pages' one; made up and logged when unset)."
        ),
    )
    board.add_argument(
        "--listen",
        default=os.environ.get("KESTRELQ_DASHBOARD_LISTEN") or DEFAULT_LISTEN,
        help=f"host:port (KESTRELQ_DASHBOARD_LISTEN, else {DEFAULT_LISTEN})",
    )
    board.add_argument(
        "--supervisor",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a supervisord to show the programs of (repeat, or a comma list; port 9001 by "
        "default; a name with several addresses is each of them); KESTRELQ_DASHBOARD_SUPERVISORS",
    )
    board.add_argument(
        "--dead-letter",
        action="append",
        default=[],
        metavar="DEAD=QUEUE",
        help="a dead-letter queue not named QUEUE_dead, and its queue (repeat); "
        "KESTRELQ_DASHBOARD_DEAD_LETTERS",
    )
    board.add_argument("--interval", type=float, default=2.0, help="seconds between samples (2)")
    board.add_argument(
        "--window", type=float, default=600.0, help="seconds of history in the charts (600)"
    )
    _server_options(board)
    board.set_defaults(func=_dashboard)


def _server_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--servers", help="host:port,... (else KESTRELQ_SERVERS)")
    sub.add_argument("--host", help="one server's address (else KESTRELQ_HOST)")
    sub.add_argument("--port", type=int, help="its port (else KESTRELQ_PORT, 22133)")
    sub.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per request to a server (5)"
    )


def _servers(args: argparse.Namespace) -> ServerList:
    return ServerList(servers_from_options(args.servers, args.host, args.port, os.environ))


def _requeue(args: argparse.Namespace) -> int:
    try:
        result = requeue(
            args.source,
            args.dest,
            servers=_servers(args),
            credentials=Credentials.from_env(),
            max_items=args.max_items,
            timeout_s=args.timeout,
        )
    except ConfigError as exc:
        print(f"kestrelq: {exc}", file=sys.stderr)
        return 2
    except CredentialsRefused as exc:
        print(f"kestrelq: {exc}", file=sys.stderr)
        return EXIT_CREDENTIALS
    for server in result.servers:
        host, port = server.address
        print(f"{host}:{port}: moved {server.moved} from {args.source} to {args.dest}")
    for error in result.errors:
        print(f"kestrelq: {error}", file=sys.stderr)
    print(f"moved {result.moved} in all")
    return 1 if result.errors else 0


def _dashboard(args: argparse.Namespace) -> int:
    # Imported here: Flask and waitress are needed by this command only.
    import waitress

    from kestrelq.dashboard.collect import Collector, parse_dead_letters, parse_supervisors
    from kestrelq.dashboard.web import create_app

    env = os.environ
    try:
        supervisors = parse_supervisors(
            ",".join(args.supervisor) or env.get("KESTRELQ_DASHBOARD_SUPERVISORS", "")
        )
        dead_letters = parse_dead_letters(
            ",".join(args.dead_letter) or env.get("KESTRELQ_DASHBOARD_DEAD_LETTERS", "")
        )
        servers = _servers(args)
        credentials = Credentials.from_env()
        host, sep, port = args.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"--listen {args.listen!r}: write host:port")
    except ConfigError as exc:
        print(f"kestrelq: {exc}", file=sys.stderr)
        return 2
    password = env.get("KESTRELQ_SUPERVISOR_PASSWORD", "")
    if not password:
        password = secrets.token_urlsafe(12)
        logger.warning("KESTRELQ_SUPERVISOR_PASSWORD not set; dashboard login for this run: "
                       "kestrelq / %s", password)  # fmt: skip
    collector = Collector(
        servers,
        credentials,
        supervisors=supervisors,
        supervisor_password=env.get("KESTRELQ_SUPERVISOR_PASSWORD", ""),
        dead_letters=dead_letters,
        interval_s=args.interval,
        window_s=args.window,
        timeout_s=min(args.timeout, 2.0),
        action_timeout_s=args.timeout,
    )
    collector.start()
    # docker stop's SIGTERM: waitress ends its loop on SystemExit, and the sampler is stopped.
    signal.signal(signal.SIGTERM, _exit)
    logger.info("dashboard on http://%s/ for %s; supervisord: %s", args.listen, servers,
                ",".join(map(str, supervisors)) or "none")  # fmt: skip
    try:
        waitress.serve(
            create_app(collector, password),
            host=host.strip("[]"),
            port=int(port),
            threads=4,
            ident="kestrelq",
            _quiet=True,
        )
    finally:
        collector.stop()
    return 0


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)
