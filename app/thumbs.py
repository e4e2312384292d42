"""Photos in, thumbnails out: what the web front end accepts and what the workers make of it.

Both sides share this module: the front end checks an upload with `check_image` (its content,
never its name) before it is stored and queued, and the worker's `thumbnail` task runs
`make_thumbnails` on the stored file. Everything here is plain functions on bytes and paths, so
the tests run it in-process.

One upload is one directory on the volume the front end and the workers share:

    <uploads>/<id>/original          the uploaded bytes, as received
    <uploads>/<id>/thumb-<size>.jpg   one per size in SIZES, longest side <= size
    <uploads>/<id>/status.json        what the page shows: queued, done or failed (and why)

Every file a reader may look at is written to a temporary name in the same directory and then
renamed (`os.replace`): a page polling the directory sees the old file or the new one, never
half a file. The names depend only on the upload, so a redelivered task rewrites the same
files: handling a message twice changes nothing a user can see.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

# Longest side of each thumbnail, in pixels.
SIZES = (128, 256, 512)
# Formats the worker's Pillow reads in every build we ship (Debian's python3-pil included).
FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
# 40 megapixels: more than any camera photo, far less than a decompression bomb needs. Pillow
# warns above this and refuses at twice it; the warning is turned into an error below.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

ORIGINAL = "original"
STATUS = "status.json"
UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class ImageRejected(ValueError):
    """This file is not an image we make thumbnails of; the message says why, for a user."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int


def _open_checked(data: bytes | Path) -> Image.Image:
    source: Any = BytesIO(data) if isinstance(data, bytes) else data
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image (accepted: {', '.join(sorted(FORMATS))})") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too many pixels (decompression bomb?): {exc}") from None
    if image.format not in FORMATS:
        image.close()
        raise ImageRejected(
            f"{image.format} images are not accepted (accepted: {', '.join(sorted(FORMATS))})"
        )
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageRejected(f"{width}x{height} is more than {MAX_PIXELS // 1_000_000} megapixels")
    return image


def check_image(data: bytes) -> ImageInfo:
    """What the front end accepts: a readable image of an accepted format and size.

    Reads the header and Pillow's `verify()` (structure and checksums where the format has
    them); it does not decode every pixel, so a file cut short inside its pixel data can
    pass, and then fails in the worker, which says so on the page.
    """
    if not data:
        raise ImageRejected("the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with _open_checked(data) as image:
                info = ImageInfo(str(image.format), *image.size)
                image.verify()
        except Image.DecompressionBombWarning as exc:
            raise ImageRejected(f"too many pixels: {exc}") from None
        except ImageRejected:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            # verify() reports broken structure as any of these.
            raise ImageRejected(f"a damaged image file: {exc}") from None
    return info


def make_thumbnails(
    source: Path, out_dir: Path, sizes: tuple[int, ...] = SIZES
) -> dict[int, tuple[int, int]]:
    """Write `thumb-<size>.jpg` for each size into out_dir; returns {size: (width, height)}.

    The EXIF orientation is applied first, so a portrait photo taken with the camera turned
    stays a portrait. Raises ImageRejected for anything that is not a whole, sane image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with _open_checked(source) as image:
                image.load()  # decodes every pixel: a truncated file fails here
                upright = ImageOps.exif_transpose(image)
                if upright.mode not in ("RGB", "L"):
                    upright = upright.convert("RGB")
                made: dict[int, tuple[int, int]] = {}
                for size in sizes:
                    thumb = upright.copy()
                    thumb.thumbnail((size, size))
                    buffer = BytesIO()
                    thumb.save(buffer, "JPEG", quality=85)
                    write_atomic(out_dir / f"thumb-{size}.jpg", buffer.getvalue())
                    made[size] = thumb.size
                return made
        except Image.DecompressionBombWarning as exc:
            raise ImageRejected(f"too many pixels: {exc}") from None
        except ImageRejected:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRejected(f"cannot decode the image: {exc}") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_status(upload_dir: Path, status: Mapping[str, Any]) -> None:
    doc = dict(status) | {"updated_at": time.time()}
    write_atomic(upload_dir / STATUS, json.dumps(doc, sort_keys=True).encode())


def read_status(upload_dir: Path) -> dict[str, Any]:
    """The upload's status, or {} when there is none (yet)."""
    try:
        doc = json.loads((upload_dir / STATUS).read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}
