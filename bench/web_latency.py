"""Upload-to-thumbnail latency of the web front end, as a user of the page sees it.

    python -m bench.web_latency --port 8080 --count 50      # against a running stack

Uploads `count` photos (1600x1200 JPEGs, one per request, as fast as the front end answers),
then polls the page's own status endpoint every 20 ms and takes, for each photo, the time from
just before its upload was sent to the first poll that saw it `done` (its thumbnails are on the
volume, the page shows them on its next poll). Prints the median and p99 of that, and of the
time the tasks waited in the queue (`waited_s`, measured by the workers).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
import urllib.request
from io import BytesIO

from PIL import Image, ImageDraw


def make_photo(i: int) -> bytes:
    image = Image.new("RGB", (1600, 1200), (20 + i % 200, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((200 + i, 200, 900, 800), fill=(240, 200, 40))
    out = BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def upload(port: int, name: str, data: bytes) -> str:
    """One photo; its upload id."""
    boundary = secrets.token_hex(16)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        page: str = reply.read().decode()
    marker = 'data-id="'
    start = page.index(marker) + len(marker)
    return str(page[start : start + 32])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--timeout-s", type=float, default=600)
    args = parser.parse_args()
    photos = [make_photo(i) for i in range(args.count)]
    sent: dict[str, float] = {}
    for i, data in enumerate(photos):
        started = time.monotonic()
        sent[upload(args.port, f"photo-{i}.jpg", data)] = started
    seen: dict[str, float] = {}
    waited: dict[str, float] = {}
    deadline = time.monotonic() + args.timeout_s
    while len(seen) < len(sent) and time.monotonic() < deadline:
        pending = [i for i in sent if i not in seen]
        url = f"http://127.0.0.1:{args.port}/api/uploads?ids={','.join(pending[:100])}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            found = json.loads(reply.read())["uploads"]
        now = time.monotonic()
        for upload_id, status in found.items():
            if status.get("state") == "done":
                seen[upload_id] = now
                waited[upload_id] = float(status["waited_s"])
        time.sleep(0.02)
    latencies = [seen[i] - sent[i] for i in seen]
    if len(seen) < len(sent):
        print(f"only {len(seen)} of {len(sent)} photos got thumbnails in {args.timeout_s:g}s")
    print(
        f"{len(latencies)} photos: upload to thumbnail shown median "
        f"{statistics.median(latencies):.2f}s p99 {percentile(latencies, 99):.2f}s; "
        f"waited in the queue median {statistics.median(waited.values()):.2f}s "
        f"p99 {percentile(list(waited.values()), 99):.2f}s"
    )


if __name__ == "__main__":
    main()
