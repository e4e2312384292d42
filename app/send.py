"""Put messages on a queue: the producer side of the demo.

    python send.py                      # one message with the current time
    python send.py hello "second one"   # each argument is one message
    python send.py --count 100 hi       # 100 copies of each message
    python send.py --task digest "some text"           # a task envelope per message
    python send.py --task sleep --arg seconds=2        # a slow task
    python send.py --task sleep --arg seconds=9 --time-limit-s 3   # ...that times out
    python send.py --json '{"task": "echo", "args": {"text": "hi"}}'

The queue servers are --servers host1:22133,host2:22133 (or $KESTRELQ_SERVERS), else the one at
--host/--port (or $KESTRELQ_HOST/$KESTRELQ_PORT, else 127.0.0.1:22133). With several, each
message goes to one of them in turn, and to the next if one fails (kestrelq.producer).
Login and TLS as every kestrelq client (KESTRELQ_USER, KESTRELQ_PASSWORD[_FILE],
KESTRELQ_TLS_CA, ...: kestrelq.credentials). Each message waits for STORED (`noreply=False`:
pymemcache's default would not wait). Exit codes, each with a clear message on stderr: 2 the
queue cannot be reached, 3 it refused a message (NOT_STORED), 64 bad usage or settings
(EX_USAGE), 77 the server refused the login (EX_NOPERM).
It needs pymemcache and kestrelq (for kestrelq.credentials) beside the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from kestrelq.credentials import EXIT_CREDENTIALS, Credentials
from kestrelq.errors import ConfigError, CredentialsRefused
from kestrelq.producer import NotStored, Producer, Unreachable
from kestrelq.servers import Entry, parse_servers, single_server

EXIT_UNREACHABLE = 2
EXIT_REFUSED = 3
EXIT_USAGE = 64


class SendError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _arg_value(text: str) -> Any:
    """`--arg k=v`: v as JSON when it parses (numbers, true, lists), else as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _task_args(items: Sequence[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SendError(f"--arg {item!r} must look like key=value", EXIT_USAGE)
        extra[key] = _arg_value(value)
    return extra


def _json_body(raw: str) -> bytes:
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SendError(f"--json {raw!r} is not JSON: {exc}", EXIT_USAGE) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        raise SendError('--json needs an object with a "task" string', EXIT_USAGE)
    return json.dumps(doc, separators=(",", ":")).encode()


def build_messages(args: argparse.Namespace) -> Iterator[bytes]:
    """The bodies to send, in order (each message `count` times)."""
    texts: list[str] = list(args.messages)
    if not texts and not args.json and not args.task:
        texts = [f"hello from send.py at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    extra = _task_args(args.arg)
    for raw in args.json or []:
        body = _json_body(raw)
        for _ in range(args.count):
            yield body
    if args.task:
        for text in texts or [""]:
            for _ in range(args.count):
                task_args = dict(extra)
                if text:
                    task_args.setdefault("text", text)
                # A fresh id per message, so duplicates and losses can be told apart.
                envelope: dict[str, Any] = {
                    "task": args.task,
                    "args": task_args,
                    "id": uuid.uuid4().hex,
                }
                if args.time_limit_s is not None:
                    envelope["time_limit_s"] = args.time_limit_s
                yield json.dumps(envelope, separators=(",", ":")).encode()
    elif not args.json:
        for text in texts:
            for _ in range(args.count):
                yield text.encode()


def send_all(
    client: Client | Producer, queue: str, bodies: Iterator[bytes], expire_s: int
) -> Iterator[int]:
    """Set each body on the queue and yield its size once it is STORED.

    `client` is one server's pymemcache client, or a Producer spreading over several.
    """
    if isinstance(client, Producer):
        yield from _send_spread(client, queue, bodies, expire_s)
        return
    where = f"{client.server[0]}:{client.server[1]}"
    for body in bodies:
        try:
            stored = client.set(queue, body, expire=expire_s, noreply=False)
        except (OSError, MemcacheError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SendError(
                f"cannot reach the queue at {where}: {reason or type(exc).__name__}",
                EXIT_UNREACHABLE,
            ) from exc
        if not stored:
            raise SendError(
                f"the queue at {where} refused a message for {queue!r} (NOT_STORED: the queue "
                "is full, the message too large, or the server is shutting down)",
                EXIT_REFUSED,
            )
        yield len(body)


def _send_spread(
    producer: Producer, queue: str, bodies: Iterator[bytes], expire_s: int
) -> Iterator[int]:
    for body in bodies:
        try:
            producer.send(queue, body, expire_s)
        except Unreachable as exc:
            raise SendError(str(exc), EXIT_UNREACHABLE) from exc
        except NotStored as exc:
            raise SendError(str(exc), EXIT_REFUSED) from exc
        except MemcacheError as exc:  # CLIENT_ERROR: the message itself is bad
            raise SendError(
                f"the queue refused a message for {queue!r}: {exc}", EXIT_REFUSED
            ) from exc
        yield len(body)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage, the code we give "cannot reach the queue"; we say 64."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(description="Put messages on a kestrelq queue.")
    parser.add_argument("messages", nargs="*", metavar="MESSAGE", help="one message each")
    parser.add_argument("--queue", "-q", default=os.environ.get("KESTRELQ_QUEUE") or "work")
    parser.add_argument(
        "--servers",
        default=os.environ.get("KESTRELQ_SERVERS") or None,
        metavar="HOST:PORT,...",
        help="every queue server, messages spread over them (env KESTRELQ_SERVERS)",
    )
    parser.add_argument("--host", default=os.environ.get("KESTRELQ_HOST") or None)
    parser.add_argument("--port", type=int, default=os.environ.get("KESTRELQ_PORT") or None)
    parser.add_argument("--count", "-n", type=int, default=1, help="send each message N times")
    parser.add_argument("--task", help="wrap each message in a task envelope for this task")
    parser.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE", help="task argument"
    )
    parser.add_argument(
        "--json", action="append", metavar="ENVELOPE", help="send this JSON task envelope"
    )
    parser.add_argument(
        "--time-limit-s",
        type=float,
        help="the task's time limit in the envelope (default: the worker's, 5 minutes)",
    )
    parser.add_argument("--expire-s", type=int, default=0, help="expiry in seconds (0 = never)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.time_limit_s is not None and not args.task:
        parser.error("--time-limit-s goes with --task (plain text has no envelope to carry it)")
    if args.time_limit_s is not None and not 0 < args.time_limit_s < float("inf"):
        parser.error("--time-limit-s must be a positive number of seconds")

    if args.servers and (args.host or args.port):
        parser.error("--servers (KESTRELQ_SERVERS) or --host/--port (KESTRELQ_HOST/PORT), not both")
    try:
        entries: list[Entry] = (
            parse_servers(args.servers) if args.servers else [single_server(args.host, args.port)]
        )
        credentials = Credentials.from_env()
    except ConfigError as exc:
        print(f"send.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    where = ",".join(str(e) for e in entries)
    client = Producer(entries, credentials=credentials, connect_timeout_s=3.0, timeout_s=10.0)
    sent = 0
    started = time.monotonic()
    try:
        for size in send_all(client, args.queue, build_messages(args), args.expire_s):
            sent += 1
            if not args.quiet:
                print(f"STORED {args.queue} ({size} bytes)")
    except SendError as exc:
        print(f"send.py: {exc}", file=sys.stderr)
        if sent:
            print(f"send.py: {sent} message(s) were stored before that", file=sys.stderr)
        return exc.code
    except CredentialsRefused as exc:
        print(f"send.py: {where}: {exc}", file=sys.stderr)
        return EXIT_CREDENTIALS
    finally:
        client.close()
    elapsed_s = time.monotonic() - started
    print(f"sent {sent} message(s) to {args.queue!r} at {where} in {elapsed_s:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
