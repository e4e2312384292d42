"""`kestrelq conf`: render supervisord's configuration from the stack description."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from kestrelq.supervisord import install
from kestrelq.supervisord.files import drift, make_dirs, write_files
from kestrelq.supervisord.render import render_stack
from kestrelq.supervisord.stack import (
    PATH_KEYS,
    Overrides,
    Stack,
    StackError,
    apply_overrides,
    load_stack,
)

logger = logging.getLogger(__name__)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a whole number") from None


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the `kestrelq` parser."""
    p = subparsers.add_parser(
        "conf",
        help="render supervisord config (and the queue's config) from conf/stack.toml",
        description=(
            "Render supervisord.conf, supervisord.d/*.ini and kestrelq.toml from one stack "
            "description. Relative paths in the description are relative to --out."
        ),
    )
    p.add_argument("--description", type=Path, help="stack description (default OUT/stack.toml)")
    p.add_argument("--out", type=Path, default=Path("conf"), help="output directory (conf)")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a diff when the files in --out differ",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="consumers per queue (default: the description; env KESTRELQ_WORKERS)",
    )
    p.add_argument(
        "--mode",
        choices=["host", "container"],
        default=os.environ.get("KESTRELQ_CONF_MODE") or None,
        help="host: daemon + rotated log files; container: foreground, logs to stdout "
        "(env KESTRELQ_CONF_MODE; default host)",
    )
    p.add_argument(
        "--only",
        choices=["all", "queue", "workers"],
        default=os.environ.get("KESTRELQ_CONF_ONLY") or None,
        help="render only the queue program or only the workers (env KESTRELQ_CONF_ONLY)",
    )
    for key in PATH_KEYS:
        p.add_argument(f"--{key.replace('_', '-')}", help=f"override paths.{key}")
    p.add_argument("--listen-host", help="address the queue server binds")
    p.add_argument(
        "--connect-host",
        default=os.environ.get("KESTRELQ_CONNECT_HOST") or None,
        help="address the workers reach the queue at (env KESTRELQ_CONNECT_HOST)",
    )
    p.add_argument(
        "--connect-servers",
        default=os.environ.get("KESTRELQ_CONNECT_SERVERS") or None,
        metavar="HOST:PORT,...",
        help="every queue server the workers read from, instead of --connect-host and --port "
        "(env KESTRELQ_CONNECT_SERVERS)",
    )
    p.add_argument("--port", type=int, help="queue server port")
    p.add_argument("--http-host", help="address of supervisord's status page")
    p.add_argument("--http-port", type=int, help="port of supervisord's status page (0 = none)")
    p.add_argument(
        "--worker-metrics-port",
        type=int,
        help="port of the workers' /metrics (default: the description's worker_metrics.port; "
        "env KESTRELQ_WORKER_METRICS_PORT; 0 = none)",
    )
    p.add_argument("--worker-metrics-host", help="address of the workers' /metrics")
    p.add_argument("--python", help="interpreter the programs run with (default python3)")
    p.add_argument("--user", help="run programs as this user (supervisord must be root)")
    p.add_argument(
        "--make-dirs", action="store_true", help="create the run, log and data directories"
    )
    p.set_defaults(func=run)
    install.register(subparsers)


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    workers = args.workers if args.workers is not None else _env_int("KESTRELQ_WORKERS")
    paths = {key: getattr(args, key) for key in PATH_KEYS if getattr(args, key)}
    metrics_port = args.worker_metrics_port
    if metrics_port is None:
        metrics_port = _env_int("KESTRELQ_WORKER_METRICS_PORT")
    return Overrides(
        workers=workers,
        mode=args.mode,
        only=args.only,
        paths=paths,
        listen_host=args.listen_host,
        connect_host=args.connect_host,
        connect_servers=args.connect_servers,
        port=args.port,
        http_host=args.http_host,
        http_port=args.http_port,
        python=args.python,
        user=args.user,
        worker_metrics_port=metrics_port,
        worker_metrics_host=args.worker_metrics_host,
    )


def rerender_command(out_dir: Path, description: Path, stack: Stack) -> str:
    """How to render these files again: '' (`make conf`) in a checkout's conf/, where the
    Makefile is; elsewhere (an install under /etc) this command, with the description's
    interpreter, which the install saved as an absolute path."""
    out = out_dir.resolve()
    if (out.parent / "Makefile").is_file() and description.resolve() == out / "stack.toml":
        return ""
    command = f"{stack.python} -m kestrelq conf --out {out}"
    if description.resolve() != out / "stack.toml":
        command += f" --description {description.resolve()}"
    return command


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out
    description: Path = args.description or out_dir / "stack.toml"
    try:
        stack = load_stack(description)
        stack = apply_overrides(stack, overrides_from_args(args))
        stack = replace(stack, rerender=rerender_command(out_dir, description, stack))
        files = render_stack(stack)
    except StackError as exc:
        print(f"kestrelq conf: {exc}", file=sys.stderr)
        return 2
    if args.check:
        diff = drift(out_dir, files)
        if diff:
            sys.stdout.write(diff)
            how = stack.rerender or "make conf"
            print(f"kestrelq conf: {out_dir} differs from {description}; run `{how}`",
                  file=sys.stderr)  # fmt: skip
            return 1
        logger.info("%s matches %s (%d files)", out_dir, description, len(files))
        return 0
    changed = write_files(out_dir, files)
    for rel in changed:
        logger.info("wrote %s", out_dir / rel)
    logger.info("%d of %d files changed in %s", len(changed), len(files), out_dir)
    if args.make_dirs:
        for path in make_dirs(out_dir, stack):
            logger.info("directory %s is ready", path)
    return 0
