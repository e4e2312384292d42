"""Example tasks for the demo application, dispatched by a JSON envelope.

A message is either a JSON envelope `{"task": "digest", "args": {"text": "..."}, "id": "..."}`
or plain text, which is handled as `digest` of that text. An envelope may also carry
`"time_limit_s"`, which the worker applies to that message. The worker runs these tasks with

    kestrelq work work --handler tasks:handle      # from this directory

and logs one line per message, with what `handle(body)` returns in it. Tasks use the standard
library, and `thumbnail` Pillow (Debian's python3-pil in the image; imported only when that
task runs): the worker image installs Debian packages only.

For tests and demos, set `KESTRELQ_HANDLED_LOG=/path/file` and every handled message appends
`start <id> <pid>` before and `done <id> <pid>` after its task, one whole line per write
(O_APPEND), so a test can tell exactly which messages were handled, how often, and by whom.
An id is written escaped (`log_id`): no whitespace or control character of a message's id can
split a line or add one.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TaskArgs = Mapping[str, Any]
Task = Callable[[TaskArgs], str]

TASKS: dict[str, Task] = {}


class TaskError(Exception):
    """A task cannot run on this message (unknown task, bad arguments, poison)."""


def task(name: str) -> Callable[[Task], Task]:
    """Register a function as the task `name`."""

    def register(fn: Task) -> Task:
        TASKS[name] = fn
        return fn

    return register


@task("digest")
def digest(args: TaskArgs) -> str:
    """sha256, size, line and word count of a text."""
    text = str(args.get("text", ""))
    data = text.encode()
    words = len(text.split())
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return (
        f"sha256={hashlib.sha256(data).hexdigest()} bytes={len(data)} lines={lines} words={words}"
    )


@task("wordcount")
def wordcount(args: TaskArgs) -> str:
    """The most frequent words of a text (`top`, default 3)."""
    text = str(args.get("text", ""))
    top = int(args.get("top", 3))
    counts = Counter(word.strip(".,;:!?\"'()").lower() for word in text.split())
    counts.pop("", None)
    best = ", ".join(f"{word}={n}" for word, n in counts.most_common(top))
    return f"words={sum(counts.values())} top: {best or '-'}"


@task("sleep")
def sleep(args: TaskArgs) -> str:
    """A slow task: sleeps `seconds` (default 1), standing in for real work."""
    seconds = float(args.get("seconds", 1.0))
    time.sleep(seconds)
    return f"slept {seconds:g}s"


@task("fail")
def fail(args: TaskArgs) -> str:
    """Always raises: a poison message, for the dead-letter demo."""
    raise TaskError(str(args.get("reason", "this task always fails")))


@task("echo")
def echo(args: TaskArgs) -> str:
    return str(args.get("text", ""))


def uploads_dir() -> Path:
    """Where the web front end stores uploads and the workers write thumbnails."""
    default = Path(__file__).resolve().parent.parent / "var" / "uploads"
    return Path(os.environ.get("KESTRELQ_UPLOADS") or default)


def max_deliveries(queue: str = "work") -> int:
    """The queue's max_deliveries in the stack description (0: unlimited or unknown)."""
    default = Path(__file__).resolve().parent.parent / "conf" / "stack.toml"
    path = Path(os.environ.get("KESTRELQ_DESCRIPTION") or default)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return 0
    own = doc.get("queues", {}).get(queue, {}).get("max_deliveries")
    value = own if own is not None else doc.get("queue_defaults", {}).get("max_deliveries", 0)
    return int(value)


def worker_name() -> str:
    """This worker as the page shows it: container (host) name and supervisord's name."""
    return f"{socket.gethostname()}/{os.environ.get('SUPERVISOR_PROCESS_NAME') or os.getpid()}"


@task("thumbnail")
def thumbnail(args: TaskArgs) -> str:
    """Thumbnails of an uploaded photo (`upload`: its id); its status.json says how it went.

    A failure is recorded (reason, how many deliveries failed, and whether that was the
    last one the queue allows, after which the server moves the message to the dead-letter
    queue), then raised, so the worker gives the message back as for any failed task.
    """
    import thumbs  # Pillow: only the workers that make thumbnails need it

    upload = str(args.get("upload", ""))
    if not thumbs.UPLOAD_ID_RE.match(upload):
        raise TaskError(f"bad upload id {upload!r}")
    folder = uploads_dir() / upload
    if not folder.is_dir():
        raise TaskError(f"no upload {upload} in {folder.parent}")
    started = time.time()
    enqueued_at = float(args.get("enqueued_at") or started)
    previous = thumbs.read_status(folder)
    # What the front end recorded (name, format, size) stays; a past failure's reason goes.
    common = {k: v for k, v in previous.items() if k not in ("error", "state")} | {
        "name": str(args.get("name", "")),
        "worker": worker_name(),
        "enqueued_at": enqueued_at,
        "waited_s": round(max(0.0, started - enqueued_at), 3),
    }
    try:
        made = thumbs.make_thumbnails(folder / thumbs.ORIGINAL, folder)
    except Exception as exc:
        failures = int(common.get("failures", 0)) + 1
        limit = max_deliveries()
        thumbs.write_status(
            folder,
            common
            | {
                "state": "dead" if limit and failures >= limit else "failed",
                "error": str(exc),
                "failures": failures,
                "max_deliveries": limit,
            },
        )
        raise
    thumbs.write_status(
        folder,
        common
        | {
            "state": "done",
            "took_s": round(time.time() - started, 3),
            "thumbs": {str(size): list(dims) for size, dims in made.items()},
        },
    )
    sizes = " ".join(f"{w}x{h}" for w, h in made.values())
    return f"thumbnails of {upload} ({sizes}) waited {common['waited_s']:.3f}s"


@dataclass(frozen=True, slots=True)
class Envelope:
    task: str
    args: TaskArgs
    id: str


def parse(body: bytes) -> Envelope:
    """Read a message: a JSON envelope, or plain text (handled as `digest`)."""
    text = body.decode("utf-8", errors="replace")
    fallback_id = hashlib.sha256(body).hexdigest()[:16]
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("task"), str):
            args = doc.get("args", {})
            if not isinstance(args, dict):
                raise TaskError("the envelope's args must be an object")
            return Envelope(doc["task"], args, str(doc.get("id") or fallback_id))
    return Envelope("digest", {"text": text}, fallback_id)


def log_id(message_id: str) -> str:
    """`message_id` as one field of a line: whitespace, control characters and `\\` escaped."""
    # isprintable() is False for every whitespace but " ", and for every control character.
    if message_id.isprintable() and " " not in message_id and "\\" not in message_id:
        return message_id
    return "".join(_id_char(ch) for ch in message_id)


def _id_char(ch: str) -> str:
    if ch.isprintable() and not ch.isspace() and ch != "\\":
        return ch
    code = ord(ch)
    # Fixed widths, so an escape never runs into the characters after it.
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def record(event: str, message_id: str) -> None:
    """Append `<event> <id> <pid>` to $KESTRELQ_HANDLED_LOG, if set (the id escaped)."""
    path = os.environ.get("KESTRELQ_HANDLED_LOG")
    if not path:
        return
    # One write() of one line on an O_APPEND descriptor: lines from several workers never mix.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{event} {log_id(message_id)} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def handle(body: bytes) -> str:
    """Run the task a message names; returns a one-line summary, raises on failure."""
    envelope = parse(body)
    fn = TASKS.get(envelope.task)
    if fn is None:
        raise TaskError(f"unknown task {envelope.task!r} (known: {', '.join(sorted(TASKS))})")
    record("start", envelope.id)
    result = fn(envelope.args)
    record("done", envelope.id)
    return f"{envelope.task} id={log_id(envelope.id)}: {result}"
