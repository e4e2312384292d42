"""The web front end from the host, as a browser's form would use it: multipart uploads, the
ids of what was queued, the status the page polls, the thumbnails it shows."""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.request
from io import BytesIO
from typing import Any

from PIL import Image

UPLOAD_ID_RE = re.compile(r'data-id="([0-9a-f]{32})"')


def upload(port: int, files: list[tuple[str, bytes]], timeout_s: float = 30) -> tuple[int, str]:
    """POST /upload with these files; (HTTP status, page)."""
    boundary = secrets.token_hex(16)
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def queued_ids(page: str) -> list[str]:
    return UPLOAD_ID_RE.findall(page)


def statuses(port: int, ids: list[str]) -> dict[str, dict[str, Any]]:
    """{id: status} from the endpoint the page polls (at most 100 ids per call)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 100):
        url = f"http://127.0.0.1:{port}/api/uploads?ids={','.join(ids[start : start + 100])}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            found |= json.loads(reply.read())["uploads"]
    return found


def thumbnail_size(port: int, upload_id: str, size: int) -> tuple[int, int]:
    url = f"http://127.0.0.1:{port}/uploads/{upload_id}/thumb-{size}.jpg"
    with urllib.request.urlopen(url, timeout=10) as reply:
        data = reply.read()
    with Image.open(BytesIO(data)) as image:
        image.load()
        return image.size
