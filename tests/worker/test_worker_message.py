"""kestrelq.worker.message: what the worker reads from a message, and escaping for log lines."""

from __future__ import annotations

import hashlib
import json

import pytest

from kestrelq.worker.message import MessageInfo, describe, escape
from kestrelq.worker.runtime import default_worker_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("plain words", "plain words", id="plain"),
        pytest.param("a\nb\r\n", "a\\nb\\r\\n", id="newlines"),
        pytest.param("tab\there", "tab\\there", id="tab"),
        pytest.param("esc\x1b[2Kbell\x07del\x7f", "esc\\x1b[2Kbell\\x07del\\x7f", id="c0-del"),
        pytest.param("c1\x85nel", "c1\\x85nel", id="c1"),
        pytest.param("ls\u2028ps\u2029", "ls\\u2028ps\\u2029", id="unicode-separators"),
        pytest.param("lone\ud800", "lone\\ud800", id="lone-surrogate"),
        pytest.param("back\\n", "back\\\\n", id="backslash-stays-unambiguous"),
        pytest.param("héllo ✓", "héllo ✓", id="printable-unicode-kept"),
    ],
)
def test_escape_keeps_one_line(text: str, expected: str) -> None:
    assert escape(text) == expected
    assert escape(text).isprintable()


def test_escape_cuts_and_says_how_much() -> None:
    assert escape("x" * 250) == "x" * 200 + "...(+50 chars)"
    assert escape("abc", limit=2) == "ab...(+1 chars)"


def test_plain_text_is_named_by_its_digest_and_shows_its_text() -> None:
    body = b"hello\n"
    assert describe(body) == MessageInfo(hashlib.sha256(body).hexdigest()[:16], "hello\n", None)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({"task": "t", "id": "m1"}, MessageInfo("m1", None, None), id="envelope"),
        pytest.param(
            {"task": "t", "id": "m1", "time_limit_s": 2.5},
            MessageInfo("m1", None, 2.5),
            id="time-limit",
        ),
        pytest.param(
            {"task": "t", "id": 7, "time_limit_s": 0}, MessageInfo("7", None, None), id="zero"
        ),
        pytest.param(
            {"task": "t", "id": "m", "time_limit_s": -1}, MessageInfo("m", None, None), id="neg"
        ),
        pytest.param(
            {"task": "t", "id": "m", "time_limit_s": True}, MessageInfo("m", None, None), id="bool"
        ),
        pytest.param(
            {"task": "t", "id": "m", "time_limit_s": "9"}, MessageInfo("m", None, None), id="str"
        ),
    ],
)
def test_envelopes_give_their_id_and_time_limit(
    doc: dict[str, object], expected: MessageInfo
) -> None:
    assert describe(json.dumps(doc).encode()) == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"no": "task"}', id="object-without-task"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"task": ' + b"[" * 100_000, id="deep"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_anything_else_is_plain_text(body: bytes) -> None:
    info = describe(body)
    assert (info.id, info.time_limit_s) == (hashlib.sha256(body).hexdigest()[:16], None)


def test_infinite_time_limit_is_ignored() -> None:
    assert describe(b'{"task": "t", "id": "m", "time_limit_s": Infinity}').time_limit_s is None


def test_worker_name_is_supervisords_process_name_else_host_and_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "work_worker_03")
    assert default_worker_name() == "work_worker_03"
    monkeypatch.delenv("SUPERVISOR_PROCESS_NAME")
    assert default_worker_name().endswith(f":{__import__('os').getpid()}")
