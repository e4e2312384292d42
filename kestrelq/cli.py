"""The `kestrelq` command: serve, stats, peek, work, conf, requeue, dashboard.

Each area owns its subcommands in its own `cli` module (`register(subparsers)`); this module
only assembles them and is the one place that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kestrelq import __version__, certs
from kestrelq.dashboard import cli as dashboard_cli
from kestrelq.server import cli as server_cli
from kestrelq.supervisord import cli as supervisord_cli
from kestrelq.worker import cli as worker_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kestrelq",
        description="A Kestrel-compatible queue server, its workers and their supervisord stack.",
    )
    parser.add_argument("--version", action="version", version=f"kestrelq {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold (default INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_cli.register(subparsers)
    worker_cli.register(subparsers)
    supervisord_cli.register(subparsers)
    certs.register(subparsers)
    dashboard_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    code: int = args.func(args)
    return code
