"""Producer and consumer processes for the server crash tests (run as a script).

    python load_client.py produce PORT QUEUE PRODUCER_ID OUT STOPFILE MAX_ITEMS
    python load_client.py consume PORT QUEUE OUT STOPFILE

A producer sets `<producer>:<n>:<padding>` for n = 0, 1, ... with `noreply=False` and
appends `n` to OUT only after the server said STORED (an error or a dropped connection leaves
the outcome unknown: that id is neither counted as stored nor retried). A consumer loops on
`get q/close/open/t=200` and appends every id (`<producer>:<n>`) it receives to OUT before it
confirms it. Both reconnect while the server is down, and stop when STOPFILE exists (a
consumer only once the queue is empty, confirming its last read). Every line is flushed at
once, so the test can read the files while the processes run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pymemcache.client.base import Client

# Far more than any test needs; a stuck process ends by itself.
LIFETIME_S = 120.0
# Makes a backlog big enough to outgrow a small memory window (read-behind).
PADDING = b"p" * 100


def _client(port: int) -> Client:
    return Client(("127.0.0.1", port), timeout=5, connect_timeout=2)


def produce(port: int, queue: str, producer: int, out: Path, stop: Path, max_items: int) -> int:
    deadline = time.monotonic() + LIFETIME_S
    client = _client(port)
    n = 0
    with out.open("a", buffering=1) as log:
        while n < max_items and not stop.exists() and time.monotonic() < deadline:
            try:
                stored = client.set(queue, b"%d:%d:%s" % (producer, n, PADDING), noreply=False)
            except Exception:
                # Unknown outcome (server killed mid-request): move on to a fresh id.
                client.close()
                time.sleep(0.02)
                n += 1
                continue
            if stored:
                log.write(f"{n}\n")
            n += 1
    client.close()
    return 0


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
            producer, n, _ = data.split(b":", 2)
            log.write(f"{int(producer)}:{int(n)}\n")
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
    if role == "produce":
        producer, out, stop, max_items = int(argv[3]), Path(argv[4]), Path(argv[5]), int(argv[6])
        return produce(port, queue, producer, out, stop, max_items)
    return consume(port, queue, Path(argv[3]), Path(argv[4]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
