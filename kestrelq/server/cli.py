"""`kestrelq serve`, `kestrelq stats`, `kestrelq peek`."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any

from kestrelq.errors import ConfigError, JournalError
from kestrelq.server import config as config_mod

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the queue server",
        description=(
            "Run the queue server. Every option can also come from the config file "
            "([server] section) or from KESTRELQ_<OPTION> environment variables; the command "
            "line wins over the environment, which wins over the file."
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
    serve.add_argument("--max-open-reads", dest="max_open_reads", type=int)
    serve.add_argument("--max-connections", dest="max_connections", type=int)
    serve.add_argument("--max-item-bytes", dest="max_item_bytes", type=int)
    serve.add_argument(
        "--salvage",
        action="store_const",
        const=True,
        help="start even if a journal is damaged mid-file, skipping the damaged bytes",
    )
    serve.set_defaults(func=_serve)

    for name, helptext, func in (
        ("stats", "print the server's stats, per queue", _stats),
        ("peek", "show the head item of a queue without removing it", _peek),
    ):
        sub = subparsers.add_parser(name, help=helptext, description=helptext)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=22133)
        sub.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        if name == "peek":
            sub.add_argument("queue")
        sub.set_defaults(func=func)


def _serve(args: argparse.Namespace) -> int:
    from kestrelq.server.server import run

    keys = ("config_file", "host", "port", "data_dir", "fsync", "max_open_reads",
            "max_connections", "max_item_bytes", "salvage")  # fmt: skip
    try:
        cfg = config_mod.load({k: getattr(args, k) for k in keys})
        return run(cfg)
    except (ConfigError, JournalError) as exc:
        logger.critical("%s", exc)
        return 2
    except OSError as exc:
        logger.critical("cannot start: %s", exc)
        return 2


def request(host: str, port: int, line: bytes, timeout: float) -> bytes:
    """Send one command line and read the reply through its END (or an error line)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(line + b"\r\n")
        data = b""
        while not (data.endswith(b"END\r\n") or data.endswith(b"ERROR\r\n") or b"ERROR " in data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _client_error(args: argparse.Namespace, exc: OSError) -> int:
    print(f"kestrelq: cannot reach {args.host}:{args.port}: {exc}", file=sys.stderr)
    return 1


def format_stats(reply: bytes) -> str:
    """Render a `stats` reply as a server summary and a table of queues."""
    server: dict[str, str] = {}
    queues: dict[str, dict[str, str]] = {}
    for raw in reply.decode(errors="replace").splitlines():
        parts = raw.split(" ", 2)
        if len(parts) != 3 or parts[0] != "STAT":
            continue
        key, value = parts[1], parts[2]
        if key.startswith("queue_"):
            for stat in (*_QUEUE_COLUMNS, "open_transactions", "children"):
                if key.endswith("_" + stat):
                    queues.setdefault(key[6 : -len(stat) - 1], {})[stat] = value
                    break
        else:
            server[key] = value
    out = [
        f"kestrelq {server.get('version', '?')}  up {server.get('uptime', '?')} s  "
        f"connections {server.get('curr_connections', '?')}  "
        f"items {server.get('curr_items', '?')}  fsync {server.get('fsync_policy', '?')} "
        f"({server.get('fsyncs', '?')} fsyncs)  journals {server.get('journal_bytes', '?')} B"
    ]
    header = ("queue", "items", "bytes", "open", "waiters", "age_ms", "total", "dead")
    rows = [header]
    for name in sorted(queues):
        q = queues[name]
        rows.append((
            name, q.get("items", "0"), q.get("bytes", "0"), q.get("open_transactions", "0"),
            q.get("waiters", "0"), q.get("age", "0"), q.get("total_items", "0"),
            q.get("dead_lettered", "0"),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
    if len(rows) == 1:
        out.append("(no queues)")
    return "\n".join(out)


_QUEUE_COLUMNS = ("items", "bytes", "waiters", "age", "total_items", "dead_lettered")


def _stats(args: argparse.Namespace) -> int:
    try:
        reply = request(args.host, args.port, b"stats", args.timeout)
    except OSError as exc:
        return _client_error(args, exc)
    print(format_stats(reply))
    return 0


def _peek(args: argparse.Namespace) -> int:
    try:
        reply = request(args.host, args.port, f"get {args.queue}/peek".encode(), args.timeout)
    except OSError as exc:
        return _client_error(args, exc)
    if not reply.startswith(b"VALUE "):
        if reply == b"END\r\n":
            print(f"{args.queue}: empty")
            return 0
        print(reply.decode(errors="replace").strip(), file=sys.stderr)
        return 1
    header, _, rest = reply.partition(b"\r\n")
    _, _, flags, length = header.split(b" ")
    data = rest[: int(length)]
    print(f"{args.queue}: head item, {int(length)} bytes, flags {int(flags)}")
    sys.stdout.write(data.decode(errors="replace") + "\n")
    return 0
