"""The one producer of the chaos tests: sends messages while the server is being killed.

    python producer.py --count N [--port P] [--host H] [--servers H:P,...] [--queue Q]
                       [--prefix X] [--interval-ms MS] [--task NAME] [--pad BYTES] [--stop FILE]
                       [--out FILE]

Sends message ids X-00000, X-00001, ... and writes one line per message (to --out, else
stdout), flushed at once so a test can read them while it runs: `STORED <id>` once the server
acknowledged it, `REFUSED <id>` for NOT_STORED, `FAILED <id> <error>` when the connection broke
(then the server may or may not have it: a test holds the server only to what it acknowledged).
A broken connection is replaced, so messages keep flowing while the queue restarts. With
--servers, each message goes through kestrelq.producer over every server (round robin, a failed
server skipped for the next), and a STORED line ends with the server that stored it. With
--task the body is a worker task envelope (`{"task", "args": {"text": id}, "id"}`), else it is
`<id>:<padding>`. Stops after --count messages, when --stop exists, or after LIFETIME_S.

Used three ways: in the app container (piped to `python -` there), as a process beside a server
killed -9 (tests/chaos/test_server_crash.py), and as `Sender` in a thread of the host chaos test.
Only the standard library, pymemcache and kestrelq.credentials, so it runs in the image
(Debian's python3-pymemcache, the package on PYTHONPATH) with nothing of the test environment;
it logs in and speaks TLS as the environment says (KESTRELQ_USER, KESTRELQ_TLS_CA, ...), as the
app container's does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Literal, TextIO

from pymemcache.client.base import Client

from kestrelq.credentials import Credentials, memcache_client
from kestrelq.producer import Producer

Outcome = Literal["STORED", "REFUSED", "FAILED"]

# Far more than any test needs; a stuck producer ends by itself.
LIFETIME_S = 120.0
# After a broken connection: the server is restarting, do not spin on connection refused.
RETRY_PAUSE_S = 0.02


class Sender:
    """Sets messages on one queue over one connection, replaced when it breaks."""

    def __init__(self, host: str, port: int, queue: str) -> None:
        self.server = (host, port)
        self.queue = queue
        self.credentials = Credentials.from_env()
        self.client: Client | None = None
        self.last_error = ""

    def send(self, body: bytes) -> Outcome:
        """One attempt, waiting for the server's answer (noreply=False)."""
        try:
            if self.client is None:
                self.client = memcache_client(
                    self.server, self.credentials, connect_timeout=1.0, timeout=3.0
                )
            stored = self.client.set(self.queue, body, noreply=False)
        except Exception as exc:  # any failure: the outcome is unknown; reconnect next time
            self.last_error = type(exc).__name__
            self.close()
            return "FAILED"
        return "STORED" if stored else "REFUSED"

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class SpreadSender:
    """Sets messages through kestrelq.producer over a server list (the swarm tests)."""

    def __init__(self, servers: str, queue: str, timeout_s: float) -> None:
        self.producer = Producer(servers, connect_timeout_s=timeout_s, timeout_s=timeout_s)
        self.queue = queue
        self.last_error = ""
        self.stored_on = ""

    def send(self, body: bytes) -> Outcome:
        try:
            host, port = self.producer.send(self.queue, body)
        except Exception as exc:  # Unreachable, NotStored, ...: nobody acknowledged it
            self.last_error = type(exc).__name__
            return "FAILED"
        self.stored_on = f"{host}:{port}"
        return "STORED"

    def close(self) -> None:
        self.producer.close()


def message(message_id: str, task: str | None, pad: int) -> bytes:
    """The body of one message: a task envelope, or the id and `pad` bytes of padding."""
    if task:
        envelope = {"task": task, "args": {"text": message_id}, "id": message_id}
        return json.dumps(envelope).encode()
    return f"{message_id}:{'p' * pad}".encode()


def produce(args: argparse.Namespace, out: TextIO) -> None:
    sender: Sender | SpreadSender
    if args.servers:
        sender = SpreadSender(args.servers, args.queue, args.timeout_s)
    else:
        sender = Sender(args.host, args.port, args.queue)
    deadline = time.monotonic() + args.lifetime_s
    for n in range(args.count):
        if (args.stop and args.stop.exists()) or time.monotonic() >= deadline:
            break
        message_id = f"{args.prefix}-{n:05d}"
        outcome = sender.send(message(message_id, args.task, args.pad))
        detail = f" {sender.last_error}" if outcome == "FAILED" else ""
        if outcome == "STORED" and isinstance(sender, SpreadSender):
            detail = f" {sender.stored_on}"
        out.write(f"{outcome} {message_id}{detail}\n")
        out.flush()
        if outcome == "FAILED":
            time.sleep(RETRY_PAUSE_S)
        # Pacing, not waiting for readiness: it spreads the messages over the chaos window.
        time.sleep(args.interval_ms / 1000.0)
    sender.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("KESTRELQ_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("KESTRELQ_PORT", "22133")))
    p.add_argument("--servers", help="a server list: send through kestrelq.producer")
    p.add_argument("--timeout-s", type=float, default=3.0, help="with --servers, per server")
    p.add_argument("--lifetime-s", type=float, default=LIFETIME_S)
    p.add_argument("--queue", default="work")
    p.add_argument("--prefix", default="m")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval-ms", type=float, default=0.0)
    p.add_argument("--task", help="send worker task envelopes of this task")
    p.add_argument("--pad", type=int, default=0, help="padding bytes of a plain message")
    p.add_argument("--stop", type=Path, help="stop once this file exists")
    p.add_argument("--out", type=Path, help="append the outcome lines here (default stdout)")
    args = p.parse_args(argv)
    if args.out is None:
        produce(args, sys.stdout)
    else:
        with args.out.open("a") as out:
            produce(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
