"""app/web.py through Flask's test client, in-process: upload checks, the queued page, the task
it enqueues, and the status the page polls, with the real thumbnail task run on that task."""

from __future__ import annotations

import json
import sys
from io import BytesIO
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from helpers import REPO
from werkzeug.test import EnvironBuilder

from images import photo

sys.path.insert(0, str(REPO / "app"))
import tasks
import web
from send import EXIT_UNREACHABLE, SendError


class Queue:
    """Stands in for the queue server: keeps what was enqueued (the wire is tested elsewhere)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.down = False

    def __call__(self, body: bytes) -> None:
        if self.down:
            raise SendError("cannot reach the queue at queue:22133: refused", EXIT_UNREACHABLE)
        self.bodies.append(body)


@pytest.fixture
def queue() -> Queue:
    return Queue()


@pytest.fixture
def uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KESTRELQ_UPLOADS", str(tmp_path))
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "work_worker_00")
    return tmp_path


@pytest.fixture
def client(uploads: Path, queue: Queue) -> FlaskClient:
    return web.create_app(uploads, queue, max_upload_mb=1).test_client()


def post(client: FlaskClient, *files: tuple[bytes, str]) -> tuple[int, str]:
    data = {"photos": [(BytesIO(content), name) for content, name in files]}
    builder = EnvironBuilder(path="/upload", method="POST", data=data)
    try:
        reply = client.open(builder)
        return reply.status_code, reply.get_data(as_text=True)
    finally:
        builder.close()


def test_front_page_has_the_form(client: FlaskClient) -> None:
    reply = client.get("/")
    assert reply.status_code == 200
    assert 'type="file"' in reply.get_data(as_text=True)
    assert client.get("/healthz").status_code == 200


def test_upload_stores_queues_and_answers_queued(
    client: FlaskClient, queue: Queue, uploads: Path
) -> None:
    code, html = post(client, (photo(), "cat.jpg"), (photo(300, 400, "PNG"), "dog.png"))
    assert code == 200
    assert html.count('data-state="queued"') == 2
    envelopes = [json.loads(b) for b in queue.bodies]
    assert [e["task"] for e in envelopes] == ["thumbnail", "thumbnail"]
    assert [e["args"]["name"] for e in envelopes] == ["cat.jpg", "dog.png"]
    for e in envelopes:
        folder = uploads / e["args"]["upload"]
        assert e["id"] == e["args"]["upload"]
        assert (folder / "original").stat().st_size > 0
        assert json.loads((folder / "status.json").read_text())["state"] == "queued"
        assert f'data-id="{e["id"]}"' in html


def test_the_task_makes_thumbnails_the_page_can_poll(client: FlaskClient, queue: Queue) -> None:
    post(client, (photo(800, 600), "cat.jpg"))
    upload = json.loads(queue.bodies[0])["id"]
    line = tasks.handle(queue.bodies[0])
    assert line.startswith(f"thumbnail id={upload}: thumbnails of {upload} (128x96 256x192")
    status = client.get(f"/api/uploads?ids={upload},nonsense").get_json()["uploads"]
    assert list(status) == [upload]
    assert status[upload]["state"] == "done"
    assert status[upload]["thumbs"]["256"] == [256, 192]
    # What the front end recorded stays beside what the worker adds.
    assert (status[upload]["format"], status[upload]["width"]) == ("JPEG", 800)
    assert status[upload]["worker"].endswith("/work_worker_00")
    assert status[upload]["waited_s"] >= 0
    thumb = client.get(f"/uploads/{upload}/thumb-256.jpg")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    thumb.close()
    # Only thumbnails are served: not the original, nothing outside the upload.
    assert client.get(f"/uploads/{upload}/original").status_code == 404
    assert client.get(f"/uploads/{upload}/..%2Fstatus.json").status_code == 404


def test_a_bad_file_is_rejected_and_the_good_ones_go_on(client: FlaskClient, queue: Queue) -> None:
    code, html = post(client, (photo(), "ok.jpg"), (b"#!/bin/sh\necho hi\n", "evil.jpg"))
    assert code == 200
    assert len(queue.bodies) == 1
    assert "evil.jpg</b>: rejected: not an image" in html


def test_nothing_acceptable_is_a_400(client: FlaskClient, queue: Queue, uploads: Path) -> None:
    code, html = post(client, (b"plain text", "notes.txt"))
    assert code == 400 and "rejected: not an image" in html
    code, html = post(client)
    assert code == 400 and "Pick at least one image" in html
    assert queue.bodies == [] and list(uploads.iterdir()) == []


def test_too_large_is_a_413_with_a_clear_message(client: FlaskClient, queue: Queue) -> None:
    # A raw body (kept in memory; a form field this big would be spooled to a temporary file).
    reply = client.post(
        "/upload",
        data=b"\xff" * (2 * 1024 * 1024),
        content_type="multipart/form-data; boundary=x",
    )
    code, html = reply.status_code, reply.get_data(as_text=True)
    assert code == 413 and "larger than 1 MB" in html
    assert queue.bodies == []


def test_queue_down_keeps_nothing_and_says_so(
    client: FlaskClient, queue: Queue, uploads: Path
) -> None:
    queue.down = True
    code, html = post(client, (photo(), "cat.jpg"))
    assert code == 503
    assert "not queued: cannot reach the queue" in html
    assert list(uploads.iterdir()) == []


def test_a_corrupt_photo_fails_and_goes_dead_after_its_deliveries(
    client: FlaskClient, queue: Queue, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    description = tmp_path / "stack.toml"
    description.write_text("[queue_defaults]\nmax_deliveries = 2\n[queues.work]\n")
    monkeypatch.setenv("KESTRELQ_DESCRIPTION", str(description))
    data = photo(800, 600)
    post(client, (data[: len(data) // 2], "cut.jpg"))
    upload = json.loads(queue.bodies[0])["id"]
    states = []
    for _ in range(2):
        with pytest.raises(Exception, match="cannot decode"):
            tasks.handle(queue.bodies[0])
        states.append(client.get(f"/api/uploads?ids={upload}").get_json()["uploads"][upload])
    assert [(s["state"], s["failures"]) for s in states] == [("failed", 1), ("dead", 2)]
    assert "cannot decode" in states[1]["error"]
