"""The dashboard's web side: one page, a JSON endpoint it polls, and two actions.

    GET  /              the page, rendered on the server from the last sample
    GET  /api/state     the same parts as HTML fragments, and the figures as data
    POST /api/requeue   move a dead-letter queue's items back to their queue (on one server)
    POST /api/drop      drop a dead-letter queue's head item, if it is still the one shown
    GET  /healthz       for the container's healthcheck; the only path without a login

Every other path wants HTTP basic auth (user `kestrelq`, the status pages' password). The
actions want the page's token in a header as well: a browser that holds the login would
otherwise send it along with a form another site posts here; a custom header cannot be sent
cross-site without a CORS preflight, which this server never answers.

The page and the endpoint render the same Jinja macros, so the first view and every update
look the same, and the script only swaps fragments in (no build step, no framework).
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flask import Flask, Response, render_template, request

from kestrelq.dashboard.collect import Collector, Snapshot, dead_letter_target, server_name
from kestrelq.errors import ConfigError, KestrelqError
from kestrelq.requeue import drop_head, requeue
from kestrelq.servers import Address

USER = "kestrelq"
TOKEN_HEADER = "X-Kestrelq-Dashboard"
# One click moves at most this many: a huge dead-letter queue is moved in bounded steps (a
# request that runs for minutes would be cut by a proxy, and the user would click again).
REQUEUE_PER_CLICK = 10_000
HERE = Path(__file__).resolve().parent


def create_app(collector: Collector, password: str) -> Flask:
    if not password:
        raise ConfigError("the dashboard needs a password (KESTRELQ_SUPERVISOR_PASSWORD)")
    app = Flask(
        __name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static")
    )
    app.jinja_env.filters.update(duration=duration, clock=clock, line=line)
    token = secrets.token_urlsafe(24)
    expected = f"{USER}:{password}".encode()

    @app.before_request
    def login() -> Response | None:
        if request.path == "/healthz" or authorized(
            request.headers.get("Authorization", ""), expected
        ):
            return None
        return Response(
            "login required\n",
            401,
            {"WWW-Authenticate": 'Basic realm="kestrelq dashboard", charset="UTF-8"'},
        )

    app.after_request(_safe_headers)

    @app.get("/healthz")
    def healthz() -> str:
        return "ok\n"

    @app.get("/")
    def index() -> str:
        view = _view(collector.snapshot, collector)
        return render_template(
            "dashboard.html", **view, token=token, interval_s=collector.interval_s
        )

    @app.get("/api/state")
    def state() -> Response:
        return _json(_state(collector.snapshot, collector))

    @app.post("/api/requeue")
    def requeue_all() -> Response:
        return _action(collector, token, _requeue_all)

    @app.post("/api/drop")
    def drop() -> Response:
        return _action(collector, token, _drop)

    return app


def authorized(header: str, expected: bytes) -> bool:
    """An `Authorization: Basic ...` header that carries exactly `user:password`."""
    scheme, _, blob = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(blob.strip(), validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(given, expected)


def _safe_headers(reply: Response) -> Response:
    reply.headers.setdefault("Cache-Control", "no-store")
    reply.headers.setdefault("X-Content-Type-Options", "nosniff")
    reply.headers.setdefault("X-Frame-Options", "DENY")
    reply.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    )
    return reply


Action = Callable[[Collector, dict[str, Any]], str]


def _action(collector: Collector, token: str, run: Action) -> Response:
    if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
        return _json({"error": "missing or wrong page token: reload the page"}, 403)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _json({"error": "expected a JSON object"}, 400)
    try:
        message = run(collector, body)
    except (ConfigError, LookupError) as exc:
        return _json({"error": str(exc)}, 400)
    except (OSError, KestrelqError) as exc:
        return _json({"error": str(exc) or type(exc).__name__}, 502)
    # Sampled again at once, so the answer already shows what the action did.
    return _json({"message": message} | _state(collector.sample(), collector))


def _dead_queue(collector: Collector, body: dict[str, Any]) -> tuple[Address, str, str]:
    """The server, the dead-letter queue and its queue that an action names (LookupError)."""
    server, queue = str(body.get("server", "")), str(body.get("queue", ""))
    address = next((a for a in collector.servers.addresses() if server_name(a) == server), None)
    if address is None:
        raise LookupError(f"no queue server {server!r} in the list")
    target = dead_letter_target(queue, collector.dead_letters)
    if target is None:
        raise LookupError(f"{queue!r} is not a dead-letter queue")
    return address, queue, target


def _requeue_all(collector: Collector, body: dict[str, Any]) -> str:
    address, queue, target = _dead_queue(collector, body)
    result = requeue(
        queue,
        target,
        servers=[address],
        credentials=collector.credentials,
        max_items=REQUEUE_PER_CLICK,
        timeout_s=collector.action_timeout_s,
    )
    if result.errors:
        raise KestrelqError(f"moved {result.moved} to {target}, then: {'; '.join(result.errors)}")
    return f"moved {result.moved} from {queue} to {target} on {server_name(address)}"


def _drop(collector: Collector, body: dict[str, Any]) -> str:
    address, queue, _ = _dead_queue(collector, body)
    with collector.client(address, collector.action_timeout_s) as client:
        dropped = drop_head(client, queue, str(body.get("digest", "")))
    if not dropped:
        return f"the head of {queue} changed meanwhile: nothing dropped"
    return f"dropped the head of {queue} on {server_name(address)}"


def duration(seconds: float) -> str:
    """`3d 4h`, `2h 5m`, `4m 10s`, `12.3s`: two units at most."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    whole = int(s)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def clock(at: float) -> str:
    """A time of day, UTC (the dashboard's viewers may be anywhere)."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(at)) if at else "never"


def line(
    points: Sequence[tuple[float, ...]],
    end: float,
    window_s: float,
    column: int,
    w: int = 160,
    h: int = 32,
) -> str:
    """SVG polyline points for `column` of `points` (time first), from the start of the window
    or of the history if that is later (a young dashboard's chart is not a sliver at the right)
    to `end`, scaled so that the largest value of any column reaches the top."""
    if not points:
        return ""
    start = max(end - window_s, points[0][0])
    span = end - start
    top = max((max(p[1:]) for p in points), default=0.0) or 1.0
    out = []
    for p in points:
        x = (p[0] - start) / span * w if span > 0 else float(w)
        y = h - 1 - p[column] / top * (h - 2)
        out.append(f"{max(0.0, x):.1f},{y:.1f}")
    return " ".join(out)


def _json(data: dict[str, Any], code: int = 200) -> Response:
    return Response(json.dumps(data), code, mimetype="application/json")


def _view(snap: Snapshot, collector: Collector) -> dict[str, Any]:
    return {
        "snap": snap,
        "since": collector.started_at,
        "window_s": collector.window_s,
    }


def _state(snap: Snapshot, collector: Collector) -> dict[str, Any]:
    """The figures, and the page's parts rendered by the page's own macros."""
    view = _view(snap, collector)
    macros = _macros()
    return {
        "at": snap.at,
        "servers": [asdict(s) for s in snap.servers],
        "queues": [
            {k: v for k, v in asdict(q).items() if k not in ("depth_line", "rate_lines")}
            for q in snap.queues
        ],
        "dead": [asdict(d) for d in snap.dead],
        "supervisors": [asdict(s) for s in snap.supervisors],
        "processes": [asdict(p) for p in snap.processes],
        "html": {
            "servers": str(macros.servers(**view)),
            "queues": str(macros.queues(**view)),
            "workers": str(macros.workers(**view)),
            "dead": str(macros.dead(**view)),
        },
    }


def _macros() -> Any:
    from flask import current_app

    return current_app.jinja_env.get_template("parts.html").module
