"""The FATAL listener speaks supervisord's event protocol (pure: stdin/stdout as strings)."""

from __future__ import annotations

import io
from pathlib import Path

from kestrelq.supervisord.listener import parse_tokens, serve


def event(name: str, payload: str) -> str:
    header = f"ver:3.0 server:supervisor serial:1 pool:fatal_listener poolserial:1 eventname:{name}"
    return f"{header} len:{len(payload)}\n{payload}"


def test_parse_tokens() -> None:
    assert parse_tokens("a:1 b:x:y junk") == {"a": "1", "b": "x:y"}


def test_fatal_event_is_acknowledged_logged_and_marked(tmp_path: Path) -> None:
    marker = tmp_path / "FATAL"
    payload = "processname:worker_01 groupname:worker from_state:BACKOFF"
    stdin = io.StringIO(
        event("PROCESS_STATE_RUNNING", "processname:q groupname:q from_state:STARTING pid:1")
        + event("PROCESS_STATE_FATAL", payload)
    )
    stdout = io.StringIO()
    assert serve(stdin, stdout, str(marker), stop_supervisord=False) == 0
    # READY before each event, a result after each, READY again, then stdin closed.
    assert stdout.getvalue() == "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    (line,) = marker.read_text().splitlines()
    assert line.endswith(" worker:worker_01 FATAL")
