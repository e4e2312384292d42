"""`kestrelq work`: run one worker process on one queue."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kestrelq.worker.registry import HandlerNotFound, resolve
from kestrelq.worker.runtime import Handler, Worker


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """--host/--port with the KESTRELQ_HOST/KESTRELQ_PORT defaults every client shares."""
    parser.add_argument(
        "--host",
        default=os.environ.get("KESTRELQ_HOST") or "127.0.0.1",
        help="queue server host (env KESTRELQ_HOST, default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        # A string default: argparse converts it with type=int, only for the command that
        # uses it, and a bad value is a usage error, not a traceback for every command.
        default=os.environ.get("KESTRELQ_PORT") or "22133",
        help="queue server port (env KESTRELQ_PORT, default 22133)",
    )


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """Options of the worker loop, shared by `kestrelq work` and `app/consume.py`."""
    add_connection_args(parser)
    parser.add_argument(
        "--wait-ms", type=int, default=1000, help="how long one blocking get waits (1000)"
    )
    parser.add_argument("--burst", action="store_true", help="exit 0 as soon as the queue is empty")
    parser.add_argument(
        "--max-messages",
        type=int,
        default=0,
        help="exit 0 after this many messages, to be restarted fresh (0 = never)",
    )
    parser.add_argument(
        "--backoff-max-s",
        type=float,
        default=5.0,
        help="longest wait between reconnect attempts (5.0)",
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the `kestrelq` parser."""
    p = subparsers.add_parser(
        "work",
        help="consume a queue and run a handler on each message",
        description=(
            "Consume QUEUE with reliable reads (get QUEUE/close/open/t=...). The first SIGTERM "
            "finishes and confirms the current message; the second gives it back."
        ),
    )
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument(
        "--handler",
        required=True,
        help="module:function called with each message's bytes (the current directory is "
        "importable)",
    )
    add_worker_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # A console script does not put the working directory on sys.path (python -m does);
    # handlers usually live next to where the worker is started.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        handler = resolve(args.handler)
    except HandlerNotFound as exc:
        print(f"kestrelq work: {exc}", file=sys.stderr)
        return 2
    return worker_from_args(args, handler).run()


def worker_from_args(args: argparse.Namespace, handler: Handler) -> Worker:
    """A Worker for `handler`, set up from the options `add_worker_args` defined."""
    return Worker(
        args.queue,
        handler,
        host=args.host,
        port=args.port,
        wait_ms=args.wait_ms,
        burst=args.burst,
        max_messages=args.max_messages,
        backoff_max_s=args.backoff_max_s,
    )
