"""app/tasks.py: envelopes, plain text, the task registry and the handled-ids log."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "app"))
import tasks


def envelope(task: str, **args: object) -> bytes:
    return json.dumps({"task": task, "args": args, "id": "id-1"}).encode()


def test_plain_text_is_a_digest() -> None:
    body = b"two words"
    line = tasks.handle(body)
    digest = hashlib.sha256(body).hexdigest()
    assert line == f"digest id={digest[:16]}: sha256={digest} bytes=9 lines=1 words=2"


def test_envelope_dispatches_to_its_task() -> None:
    assert tasks.handle(envelope("wordcount", text="a b a. c A", top=2)) == (
        "wordcount id=id-1: words=5 top: a=3, b=1"
    )
    assert tasks.handle(envelope("echo", text="hi")) == "echo id=id-1: hi"


def test_json_without_a_task_is_plain_text() -> None:
    assert tasks.parse(b'{"hello": 1}').task == "digest"
    assert tasks.parse(b"{not json").task == "digest"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(envelope("fail"), "this task always fails", id="poison"),
        pytest.param(envelope("nope"), "unknown task 'nope'", id="unknown"),
        pytest.param(b'{"task": "echo", "args": [1]}', "args must be an object", id="bad-args"),
    ],
)
def test_bad_messages_raise(body: bytes, message: str) -> None:
    with pytest.raises(tasks.TaskError, match=message):
        tasks.handle(body)


def test_handled_log_records_start_and_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "handled.log"
    monkeypatch.setenv("KESTRELQ_HANDLED_LOG", str(log))
    tasks.handle(envelope("sleep", seconds=0))
    with pytest.raises(tasks.TaskError):
        tasks.handle(envelope("fail"))
    events = [line.split()[:2] for line in log.read_text().splitlines()]
    assert events == [["start", "id-1"], ["done", "id-1"], ["start", "id-1"]]
