"""The worker program that supervisord runs: consume a queue and run the tasks of tasks.py.

    python consume.py [--queue work] [--host H] [--port P] [--burst]

Prints one line per handled message on stdout (flushed, so `docker compose logs worker` and the
supervisord log files show it at once); the worker's own log lines go to stderr. Stop it with
SIGTERM: it finishes and confirms the current message, then exits 0. See kestrelq.worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import tasks

from kestrelq.worker.cli import add_worker_args, worker_from_args

logger = logging.getLogger("consume")


def handle(body: bytes) -> None:
    """Run one message's task and print its line; a raising task makes the worker abort it."""
    try:
        line = tasks.handle(body)
    except Exception as exc:
        emit(f"failed: {type(exc).__name__}: {exc}")
        raise
    emit(line)


def emit(line: str) -> None:
    # One write per line: print() writes the text and the newline separately, and with
    # several workers sharing a container's stdout two lines could come out joined.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Consume a queue and run the demo tasks.")
    parser.add_argument(
        "--queue",
        default=os.environ.get("KESTRELQ_QUEUE") or "work",
        help="queue to consume (env KESTRELQ_QUEUE, default work)",
    )
    add_worker_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("KESTRELQ_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    return worker_from_args(args, handle).run()


if __name__ == "__main__":
    raise SystemExit(main())
