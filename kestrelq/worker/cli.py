"""`kestrelq work`: run one worker process on one queue."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from kestrelq.credentials import EXIT_CREDENTIALS, Credentials
from kestrelq.errors import ConfigError, CredentialsRefused
from kestrelq.servers import Entry, servers_from_options
from kestrelq.worker import metrics
from kestrelq.worker.registry import HandlerNotFound, resolve
from kestrelq.worker.runtime import (
    DEFAULT_MAX_TIME_LIMIT_S,
    DEFAULT_RETRY_DELAY_MAX_S,
    DEFAULT_RETRY_DELAY_S,
    DEFAULT_STOP_TIMEOUT_S,
    DEFAULT_TIME_LIMIT_S,
    Handler,
    Worker,
)


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """--servers, or --host/--port, with the KESTRELQ_* defaults every client shares."""
    parser.add_argument(
        "--servers",
        metavar="HOST:PORT,...",
        help="every queue server to read from (env KESTRELQ_SERVERS; a DNS name may stand for "
        "several); instead of --host/--port",
    )
    parser.add_argument(
        "--host", help="the queue server's host (env KESTRELQ_HOST, default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, help="queue server port (env KESTRELQ_PORT, default 22133)"
    )


def _env_default(name: str, default: float) -> str:
    # A string default: argparse converts it with the option's type, so a bad value in the
    # environment is a usage error naming the option, not a traceback.
    return os.environ.get(name) or f"{default:g}"


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """Options of the worker loop (see kestrelq.worker.runtime for what each one means)."""
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
    parser.add_argument(
        "--time-limit-s",
        type=_non_negative,
        default=_env_default("KESTRELQ_TIME_LIMIT_S", DEFAULT_TIME_LIMIT_S),
        help="a message's time limit unless its envelope sets time_limit_s; a handler past it "
        "is interrupted and the message fails (env KESTRELQ_TIME_LIMIT_S, default "
        f"{DEFAULT_TIME_LIMIT_S:g}; 0 = none). Keep it below the server's open-read timeout "
        "(open_timeout_ms, 10 minutes by default), or the server gives the message to another "
        "worker while this one is still on it",
    )
    parser.add_argument(
        "--max-time-limit-s",
        type=_non_negative,
        default=_env_default("KESTRELQ_MAX_TIME_LIMIT_S", DEFAULT_MAX_TIME_LIMIT_S),
        help="the longest time_limit_s an envelope may ask for (env KESTRELQ_MAX_TIME_LIMIT_S, "
        f"default {DEFAULT_MAX_TIME_LIMIT_S:g})",
    )
    parser.add_argument(
        "--stop-timeout-s",
        type=_non_negative,
        default=_env_default("KESTRELQ_STOP_TIMEOUT_S", DEFAULT_STOP_TIMEOUT_S),
        help="on SIGTERM, finish the current message for at most this long, then give it back "
        "and exit 1; keep it below supervisord's stopwaitsecs (env KESTRELQ_STOP_TIMEOUT_S, "
        f"default {DEFAULT_STOP_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--retry-delay-s",
        type=_non_negative,
        default=_env_default("KESTRELQ_RETRY_DELAY_S", DEFAULT_RETRY_DELAY_S),
        help="wait before giving a failed message back, doubled at each failure of the same "
        f"message (env KESTRELQ_RETRY_DELAY_S, default {DEFAULT_RETRY_DELAY_S:g})",
    )
    parser.add_argument(
        "--retry-delay-max-s",
        type=_non_negative,
        default=_env_default("KESTRELQ_RETRY_DELAY_MAX_S", DEFAULT_RETRY_DELAY_MAX_S),
        help="the longest such wait (env KESTRELQ_RETRY_DELAY_MAX_S, default "
        f"{DEFAULT_RETRY_DELAY_MAX_S:g})",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=os.environ.get("KESTRELQ_MAX_DELIVERIES") or "0",
        help="the queue's max_deliveries, so the worker can say when it gives a message up "
        "to the dead-letter queue (env KESTRELQ_MAX_DELIVERIES, default 0 = not known)",
    )
    parser.add_argument(
        "--dead-letter",
        default="",
        help="the queue's dead-letter queue, for that line (default QUEUE_dead)",
    )


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the `kestrelq` parser."""
    p = subparsers.add_parser(
        "work",
        help="consume a queue and run a handler on each message",
        description=(
            "Consume QUEUE with reliable reads (get QUEUE/close/open/t=...). Each message runs "
            "under a time limit; a failed one is given back after a growing delay. The first "
            "SIGTERM finishes and confirms the current message (for at most --stop-timeout-s); "
            "the second gives it back. One log line per message: the worker's name, msg=<id>, "
            "and a plain-text message's text."
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

    m = subparsers.add_parser(
        "worker-metrics",
        help="serve the /metrics of a pool of workers (prometheus_client multiprocess mode)",
        description=(
            "Serve, on every path, the metrics that the workers sharing PROMETHEUS_MULTIPROC_DIR "
            "wrote: each `kestrelq work` started with that variable set records what it "
            "handled there, and this sums every process's files at each scrape, so the "
            "counters survive a worker's restart. Empty the directory before the pool starts."
        ),
    )
    m.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    m.add_argument(
        "--port",
        type=int,
        default=os.environ.get(metrics.PORT_ENV) or str(metrics.DEFAULT_PORT),
        help=f"port to bind (env {metrics.PORT_ENV}, default {metrics.DEFAULT_PORT})",
    )
    m.add_argument(
        "--dir",
        default=os.environ.get(metrics.MULTIPROC_ENV) or None,
        help=f"the pool's directory (default: env {metrics.MULTIPROC_ENV})",
    )
    m.set_defaults(func=run_metrics)


def run_metrics(args: argparse.Namespace) -> int:
    if not args.dir:
        print(
            f"kestrelq worker-metrics: give --dir or set {metrics.MULTIPROC_ENV}", file=sys.stderr
        )
        return 2
    try:
        return metrics.serve_pool(args.host, args.port, args.dir)
    except OSError as exc:
        print(f"kestrelq worker-metrics: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


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
    try:
        worker_metrics = metrics.metrics_from_env(args.queue)
    except (OSError, ImportError) as exc:
        # Asked for (PROMETHEUS_MULTIPROC_DIR is set) but impossible: say so rather than run
        # a worker whose pool's counts silently leave it out.
        print(f"kestrelq work: metrics in ${metrics.MULTIPROC_ENV}: {exc}", file=sys.stderr)
        return 2
    try:
        return worker_from_args(args, handler, worker_metrics).run()
    except ConfigError as exc:
        print(f"kestrelq work: {exc}", file=sys.stderr)
        return 2
    except CredentialsRefused as exc:
        # Not retried: a worker waits out a server that is down, not a wrong password.
        print(f"kestrelq work: {exc}", file=sys.stderr)
        return EXIT_CREDENTIALS
    finally:
        worker_metrics.close()


def servers_from_args(args: argparse.Namespace) -> list[Entry]:
    """The server list that --servers or --host/--port name, else their variables."""
    return servers_from_options(args.servers, args.host, args.port, os.environ)


def worker_from_args(
    args: argparse.Namespace, handler: Handler, worker_metrics: metrics.Metrics | None = None
) -> Worker:
    """A Worker for `handler`, set up from the options `add_worker_args` defined."""
    return Worker(
        args.queue,
        handler,
        servers=servers_from_args(args),
        wait_ms=args.wait_ms,
        burst=args.burst,
        max_messages=args.max_messages,
        backoff_max_s=args.backoff_max_s,
        time_limit_s=args.time_limit_s,
        max_time_limit_s=args.max_time_limit_s,
        stop_timeout_s=args.stop_timeout_s,
        retry_delay_s=args.retry_delay_s,
        retry_delay_max_s=args.retry_delay_max_s,
        max_deliveries=args.max_deliveries,
        dead_letter=args.dead_letter,
        credentials=Credentials.from_env(),
        metrics=worker_metrics,
    )
