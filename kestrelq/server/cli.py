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
    """Send one command line and read its whole reply: STAT lines or a VALUE block up to END,
    or a single error line."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(line + b"\r\n")
        data = b""
        while not _reply_complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _reply_complete(data: bytes) -> bool:
    first, sep, rest = data.partition(b"\r\n")
    if not sep:
        return False
    if first.startswith(b"VALUE "):
        # The data block may itself contain "END\r\n": count its bytes instead.
        length = int(first.rsplit(b" ", 1)[1])
        return len(rest) >= length + len(b"\r\nEND\r\n")
    if first.startswith((b"STAT ", b"queue '")):
        return data.endswith(b"\r\nEND\r\n")
    return True


def _client_error(args: argparse.Namespace, exc: OSError) -> int:
    print(f"kestrelq: cannot reach {args.host}:{args.port}: {exc}", file=sys.stderr)
    return 1


def parse_stats(reply: bytes) -> dict[str, str]:
    """`STAT name value` lines as a dict."""
    stats: dict[str, str] = {}
    for raw in reply.decode(errors="replace").splitlines():
        parts = raw.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            stats[parts[1]] = parts[2]
    return stats


def parse_dump_stats(reply: bytes) -> dict[str, dict[str, str]]:
    """Kestrel's `dump_stats` brace format: per queue, unambiguous even for names with `_`."""
    queues: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in reply.decode(errors="replace").splitlines():
        if raw.startswith("queue '") and raw.endswith("' {"):
            current = queues.setdefault(raw[len("queue '") : -len("' {")], {})
        elif raw == "}":
            current = None
        elif current is not None and "=" in raw:
            key, _, value = raw.strip().partition("=")
            current[key] = value
    return queues


def format_stats(server: dict[str, str], queues: dict[str, dict[str, str]]) -> str:
    """A server summary line and a table of queues."""
    out = [
        f"kestrelq {server.get('version', '?')}  up {server.get('uptime', '?')} s  "
        f"connections {server.get('curr_connections', '?')}  "
        f"items {server.get('curr_items', '?')}  fsync {server.get('fsync_policy', '?')} "
        f"({server.get('fsyncs', '?')} fsyncs)  journals {server.get('journal_bytes', '?')} B"
    ]
    header = ("queue", "items", "bytes", "in_memory", "open", "waiters", "age_ms", "total", "dead")
    keys = ("items", "bytes", "mem_items", "open_transactions", "waiters", "age",
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
    return "\n".join(out)


def _stats(args: argparse.Namespace) -> int:
    try:
        server = parse_stats(request(args.host, args.port, b"stats", args.timeout))
        queues = parse_dump_stats(request(args.host, args.port, b"dump_stats", args.timeout))
    except OSError as exc:
        return _client_error(args, exc)
    print(format_stats(server, queues))
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
