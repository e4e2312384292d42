"""The web front end: upload photos, see their thumbnails appear as the workers make them.

    python web.py                 # waitress on 0.0.0.0:8080 (KESTRELQ_WEB_PORT), from app/

`POST /upload` checks every file by its content (thumbs.check_image), stores each accepted
one in its own directory on the uploads volume (shared with the workers), writes its status
("queued") and puts one `thumbnail` task per photo on the queue with send.py's library call,
waiting for STORED. It answers at once; the page then polls `GET /api/uploads?ids=...` (the
status.json the workers write) and shows each thumbnail, which worker made it and how long
the task waited in the queue. Settings come from the environment, as for every client: the
servers (KESTRELQ_SERVERS, or KESTRELQ_HOST/_PORT), login and TLS (kestrelq.credentials); and
KESTRELQ_QUEUE (default work), KESTRELQ_UPLOADS (the shared directory),
KESTRELQ_WEB_MAX_UPLOAD_MB (default 25).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import thumbs
from flask import Flask, Response, abort, render_template, request, send_from_directory
from send import SendError, send_all
from tasks import uploads_dir
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.utils import secure_filename

from kestrelq.credentials import Credentials
from kestrelq.producer import Producer
from kestrelq.servers import Entry, servers_from_env

MAX_FILES = 20
RECENT = 24
Enqueue = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class Rejected:
    name: str
    reason: str


def queue_sender(servers: list[Entry], queue: str) -> Enqueue:
    """Enqueue with send.py's `send_all` (STORED awaited) through a Producer over `servers`.

    A fresh Producer per call (one short connection): a Producer is not thread-safe, waitress
    serves from several threads, and a queue that was just restarted is tried again at once
    rather than left out for a producer's backoff.
    """
    credentials = Credentials.from_env()

    def enqueue(body: bytes) -> None:
        producer = Producer(servers, credentials=credentials, connect_timeout_s=3.0, timeout_s=10.0)
        try:
            for _ in send_all(producer, queue, iter([body]), 0):
                pass
        finally:
            producer.close()

    return enqueue


def _status_view(upload: str, status: dict[str, Any]) -> dict[str, Any]:
    return status | {"id": upload, "base": f"uploads/{upload}/"}


def store_and_queue(uploads: Path, enqueue: Enqueue, name: str, data: bytes) -> dict[str, Any]:
    """Check one file, store it, mark it queued and queue its task; its status for the page.

    Raises ImageRejected (nothing stored) or SendError (what was stored is removed again: a
    photo that is not queued never gets thumbnails, so it must not look as if it would).
    """
    info = thumbs.check_image(data)
    upload_id = uuid.uuid4().hex
    folder = uploads / upload_id
    folder.mkdir()
    thumbs.write_atomic(folder / thumbs.ORIGINAL, data)
    now = time.time()
    status = {
        "state": "queued",
        "name": name,
        "enqueued_at": now,
        "format": info.format,
        "width": info.width,
        "height": info.height,
    }
    # Written before the task is queued: a fast worker's "done" must not be overwritten.
    thumbs.write_status(folder, status)
    body = json.dumps(
        {
            "task": "thumbnail",
            "id": upload_id,
            "args": {"upload": upload_id, "name": name, "enqueued_at": now},
        },
        separators=(",", ":"),
    ).encode()
    try:
        enqueue(body)
    except SendError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return _status_view(upload_id, status)


def recent(uploads: Path) -> list[dict[str, Any]]:
    """The latest uploads, newest first, for the front page."""
    dirs = [d for d in uploads.iterdir() if thumbs.UPLOAD_ID_RE.match(d.name)]
    dirs.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    return [_status_view(d.name, thumbs.read_status(d)) for d in dirs[:RECENT]]


def create_app(uploads: Path, enqueue: Enqueue, max_upload_mb: float = 25) -> Flask:
    app = Flask(__name__)
    # Flask refuses a larger request body with 413 before reading it.
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    uploads.mkdir(parents=True, exist_ok=True)

    def page(
        items: Iterable[dict[str, Any]], rejected: list[Rejected], code: int = 200, error: str = ""
    ) -> tuple[str, int]:
        html = render_template(
            "index.html",
            uploads=list(items),
            rejected=rejected,
            error=error,
            sizes=thumbs.SIZES,
            max_mb=max_upload_mb,
            max_files=MAX_FILES,
            formats=", ".join(sorted(thumbs.FORMATS)),
        )
        return html, code

    @app.get("/")
    def index() -> tuple[str, int]:
        return page(recent(uploads), [])

    @app.get("/healthz")
    def healthz() -> str:
        return "ok\n"

    @app.post("/upload")
    def upload() -> tuple[str, int]:
        files = [f for f in request.files.getlist("photos") if f.filename]
        if not files:
            return page([], [], 400, "Pick at least one image to upload.")
        if len(files) > MAX_FILES:
            return page([], [], 400, f"At most {MAX_FILES} files per upload.")
        accepted: list[dict[str, Any]] = []
        rejected: list[Rejected] = []
        for file in files:
            name = secure_filename(file.filename or "") or "unnamed"
            try:
                accepted.append(store_and_queue(uploads, enqueue, name, file.read()))
            except (thumbs.ImageRejected, SendError) as exc:
                prefix = "not queued: " if isinstance(exc, SendError) else ""
                rejected.append(Rejected(name, f"{prefix}{exc}"))
        if accepted:
            return page(accepted, rejected)
        return page(
            [],
            rejected,
            400 if all(not r.reason.startswith("not queued") for r in rejected) else 503,
        )

    @app.get("/api/uploads")
    def statuses() -> Response:
        ids = [i for i in request.args.get("ids", "").split(",") if thumbs.UPLOAD_ID_RE.match(i)]
        found = {i: _status_view(i, thumbs.read_status(uploads / i)) for i in ids[:100]}
        return Response(
            json.dumps({"uploads": found}),
            mimetype="application/json",
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/uploads/<upload>/<name>")
    def thumbnail(upload: str, name: str) -> Response:
        allowed = {f"thumb-{size}.jpg" for size in thumbs.SIZES}
        if not thumbs.UPLOAD_ID_RE.match(upload) or name not in allowed:
            abort(404)
        return send_from_directory(uploads / upload, name, max_age=0)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: HTTPException) -> tuple[str, int]:
        return page([], [], 413, f"The upload is larger than {max_upload_mb:g} MB.")

    return app


def main() -> None:
    import waitress

    servers = servers_from_env()
    queue = os.environ.get("KESTRELQ_QUEUE") or "work"
    app = create_app(
        uploads_dir(),
        queue_sender(servers, queue),
        float(os.environ.get("KESTRELQ_WEB_MAX_UPLOAD_MB") or 25),
    )
    listen = os.environ.get("KESTRELQ_WEB_LISTEN") or "0.0.0.0:8080"
    print(
        f"web front end on http://{listen}/ (queue {queue!r} at {','.join(map(str, servers))})",
        flush=True,
    )
    waitress.serve(app, listen=listen, threads=8, ident="kestrelq")


if __name__ == "__main__":
    main()
