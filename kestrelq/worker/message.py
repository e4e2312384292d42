"""What the worker reads from a message for its own use: an id, a text preview, a time limit.

The worker hands the handler the message's bytes unchanged. For its log lines and its time
limit it looks at one convention, the task envelope that `app/send.py` writes:

    {"task": "sleep", "args": {"seconds": 2}, "id": "9f1c...", "time_limit_s": 30}

A JSON object with a string `task` is an envelope: its `id` names it in the log and its
`time_limit_s` (a positive number) replaces the worker's default time limit for that message.
Anything else is plain text: its id is the first 16 hex digits of its sha256 (what the demo
tasks use too, so the worker's line and the task's own output name a message alike), and its
text is shown in the log line.

Everything taken from a message and put in a log line goes through `escape`: a newline or any
other control character in an id or a text must not start a line of its own in the log, where
it could pass for a line the worker wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

ID_MAX_CHARS = 64
TEXT_MAX_CHARS = 200

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    # Line separators, and lone surrogates (JSON can carry them) that no encoder would take.
    if code in (0x2028, 0x2029) or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return ch


def escape(text: str, limit: int = TEXT_MAX_CHARS) -> str:
    """`text` on one line: backslash escapes for control characters, cut at `limit` characters.

    The cut is marked with how much was left out, so a cut text is never taken for the whole.
    """
    shown = text[:limit]
    # The common case, a text with nothing to escape, in one C-level check.
    if shown.isprintable() and "\\" not in shown:
        out = shown
    else:
        out = "".join(_escape_char(ch) for ch in shown)
    if len(text) > limit:
        out += f"...(+{len(text) - limit} chars)"
    return out


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """The worker's view of one message (see the module docstring)."""

    id: str
    text: str | None  # the decoded body of a plain-text message; None for an envelope
    time_limit_s: float | None  # from the envelope; None means the worker's default


def describe(body: bytes) -> MessageInfo:
    """Read the id, the text and the time limit of a message; never raises."""
    text = body.decode("utf-8", errors="replace")
    digest_id = hashlib.sha256(body).hexdigest()[:16]
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("task"), str):
            return MessageInfo(str(doc.get("id") or digest_id), None, _time_limit(doc))
    return MessageInfo(digest_id, text, None)


def _time_limit(doc: dict[str, object]) -> float | None:
    value = doc.get("time_limit_s")
    # bool is an int: `true` is not a time limit. NaN and inf are not either.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)
