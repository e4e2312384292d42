"""A supervisord event listener that makes FATAL programs visible.

supervisord gives up on a program that keeps dying during start (`startretries` exhausted) and
marks it FATAL, then carries on as if nothing happened: no exit, no alert. Run as
`[eventlistener:x] events=PROCESS_STATE_FATAL`, this listener logs a line on stderr, appends a
line to a marker file (which a health check or a test can look for), and with
`--stop-supervisord` sends SIGTERM to supervisord so that a container exits and its restart
policy takes over. supervisord then exits 0, which is why the marker file exists too.

The protocol (supervisor docs, "Events"): write `READY\\n` on stdout, read a header line of
`key:value` tokens, read `len` bytes of payload, answer `RESULT 2\\nOK`, repeat. stdout carries
only that protocol, so every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

logger = logging.getLogger("kestrelq.supervisord.listener")


def parse_tokens(line: str) -> dict[str, str]:
    """`a:1 b:2` -> {"a": "1", "b": "2"} (the format of event headers and payload headers)."""
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def handle_event(headers: dict[str, str], payload: str, marker: str | None) -> str | None:
    """Record one event; returns the program name when it was a FATAL transition."""
    if headers.get("eventname") != "PROCESS_STATE_FATAL":
        return None
    first, _, _ = payload.partition("\n")
    fields = parse_tokens(first)
    group = fields.get("groupname", "?")
    name = fields.get("processname", "?")
    full = name if group == name else f"{group}:{name}"
    logger.error(
        "program %s is FATAL: supervisord gave up restarting it (from state %s)",
        full,
        fields.get("from_state", "?"),
    )
    if marker:
        # O_APPEND: one whole line per event even if several listeners share the file.
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {full} FATAL\n"
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    return full


def serve(stdin: TextIO, stdout: TextIO, marker: str | None, stop_supervisord: bool) -> int:
    """Run the listener protocol until stdin closes (supervisord stopping)."""
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        headers = parse_tokens(line)
        payload = stdin.read(int(headers.get("len", "0")))
        fatal = handle_event(headers, payload, marker)
        stdout.write("RESULT 2\nOK")
        stdout.flush()
        if fatal and stop_supervisord:
            # Our parent is supervisord; SIGTERM is its orderly shutdown.
            logger.error(
                "stopping supervisord (pid %d) so that the container restarts", os.getppid()
            )
            os.kill(os.getppid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--marker", help="append one line per FATAL program to this file")
    parser.add_argument(
        "--stop-supervisord",
        action="store_true",
        help="send SIGTERM to supervisord after a FATAL (container mode)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    return serve(sys.stdin, sys.stdout, args.marker, args.stop_supervisord)


if __name__ == "__main__":
    raise SystemExit(main())
