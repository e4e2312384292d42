"""Producer for the container chaos tests; runs INSIDE the app container (stdin to `python -`).

    python - PREFIX COUNT INTERVAL_MS     (KESTRELQ_HOST / KESTRELQ_PORT locate the queue)

Sends COUNT `echo` task envelopes to queue `work`, with ids PREFIX-00000, PREFIX-00001, ...,
and prints one line per message: `STORED <id>` once the server acknowledged it, `REFUSED <id>`
for NOT_STORED, `FAILED <id> <error>` when the connection broke (then the server may or may
not have stored it; the test only holds the server to what it acknowledged). A broken
connection is replaced, so messages keep flowing while the queue is killed and restarted.

Only the standard library and pymemcache: the image has Debian's python3-pymemcache and
nothing of the test environment.
"""

from __future__ import annotations

import json
import os
import sys
import time

from pymemcache.client.base import Client


def main(argv: list[str]) -> int:
    prefix, count, interval_ms = argv[0], int(argv[1]), float(argv[2])
    host = os.environ.get("KESTRELQ_HOST", "queue")
    server = (host, int(os.environ.get("KESTRELQ_PORT", "22133")))
    client: Client | None = None
    for i in range(count):
        message_id = f"{prefix}-{i:05d}"
        body = json.dumps({"task": "echo", "args": {"text": message_id}, "id": message_id})
        try:
            if client is None:
                client = Client(server, connect_timeout=1.0, timeout=3.0)
            stored = client.set("work", body, noreply=False)
        except Exception as exc:  # any failure: report it and reconnect for the next message
            print(f"FAILED {message_id} {type(exc).__name__}", flush=True)
            if client is not None:
                client.close()
            client = None
        else:
            print(f"{'STORED' if stored else 'REFUSED'} {message_id}", flush=True)
        # Pacing, not waiting for readiness: it spreads the messages over the chaos window.
        time.sleep(interval_ms / 1000.0)
    if client is not None:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
