"""app/web.py's enqueue against a real server: the task is STORED on the queue, whole; a server
that is down is a SendError the page turns into "not queued"."""

from __future__ import annotations

import json
import sys
from io import BytesIO
from pathlib import Path

import pytest
from helpers import REPO, ServerProcess, free_port
from pymemcache.client.base import Client

from images import photo
from kestrelq.servers import Entry

sys.path.insert(0, str(REPO / "app"))
import web
from send import SendError


def test_upload_puts_its_task_on_the_real_queue(server: ServerProcess, tmp_path: Path) -> None:
    enqueue = web.queue_sender([Entry("127.0.0.1", server.port)], "work")
    client = web.create_app(tmp_path, enqueue).test_client()
    reply = client.post(
        "/upload",
        data={"photos": [(BytesIO(photo()), "cat.jpg")]},
        content_type="multipart/form-data",
    )
    assert reply.status_code == 200
    reader = Client(("127.0.0.1", server.port))
    try:
        body = reader.get("work")
    finally:
        reader.close()
    envelope = json.loads(body)
    assert envelope["task"] == "thumbnail"
    assert (tmp_path / envelope["id"] / "original").read_bytes() == photo()


def test_a_server_that_is_down_is_a_send_error() -> None:
    enqueue = web.queue_sender([Entry("127.0.0.1", free_port())], "work")
    with pytest.raises(SendError, match=r"127\.0\.0\.1"):
        enqueue(b'{"task":"thumbnail"}')
