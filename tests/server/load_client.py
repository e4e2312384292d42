"""Consumer processes for the server crash tests (run as a script; tests/producer.py produces).

    python load_client.py consume PORT QUEUE OUT STOPFILE

A consumer loops on `get q/close/open/t=200` and appends the id of every message it receives
(the producer's `<id>:<padding>` body up to the colon) to OUT before it confirms it. It
reconnects while the server is down, and stops when STOPFILE exists and the queue is empty,
confirming its last read. Every line is flushed at once, so the test can read the file while
the process runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pymemcache.client.base import Client

# Far more than any test needs; a stuck process ends by itself.
LIFETIME_S = 120.0


def _client(port: int) -> Client:
    return Client(("127.0.0.1", port), timeout=5, connect_timeout=2)


def consume(port: int, queue: str, out: Path, stop: Path) -> int:
    deadline = time.monotonic() + LIFETIME_S
    client = _client(port)
    holding = False
    with out.open("a", buffering=1) as log:
        while time.monotonic() < deadline:
            # Look first: a miss that began after the stop file appeared means drained.
            stopping = stop.exists()
            try:
                data = client.get(f"{queue}/close/open/t=200")
            except Exception:
                client.close()
                holding = False  # the server is gone; its restart returns the read
                time.sleep(0.02)
                continue
            if data is None:
                holding = False
                if stopping:
                    break
                continue
            log.write(data.split(b":", 1)[0].decode() + "\n")
            holding = True
        if holding:
            try:
                client.get(f"{queue}/close")
            except Exception:
                return 1
    client.close()
    return 0


def main(argv: list[str]) -> int:
    role, port, queue = argv[0], int(argv[1]), argv[2]
    if role != "consume":
        raise SystemExit(f"unknown role {role!r}: producers are tests/producer.py")
    return consume(port, queue, Path(argv[3]), Path(argv[4]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
