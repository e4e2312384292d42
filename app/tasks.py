"""Example tasks for the demo application, dispatched by a JSON envelope.

A message is either a JSON envelope `{"task": "digest", "args": {"text": "..."}, "id": "..."}`
or plain text, which is handled as `digest` of that text. An envelope may also carry
`"time_limit_s"`, which the worker applies to that message. The worker runs these tasks with

    kestrelq work work --handler tasks:handle      # from this directory

and logs one line per message, with what `handle(body)` returns in it. Tasks use only the
standard library: the worker image installs Debian packages only.

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
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
