"""app/thumbs.py: what the front end accepts and the thumbnails the workers make, in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO
from PIL import Image

from images import photo

sys.path.insert(0, str(REPO / "app"))
import thumbs


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_accepted_formats(fmt: str) -> None:
    info = thumbs.check_image(photo(320, 200, fmt))
    assert (info.format, info.width, info.height) == (fmt, 320, 200)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is text\n" * 10, "not an image"),
        (b"%PDF-1.4\n" + b"x" * 100, "not an image"),
        # A PNG header whose chunks are cut off: the name and magic say PNG, the content not.
        (photo(64, 64, "PNG")[:60], "damaged"),
    ],
)
def test_rejected_uploads_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(thumbs.ImageRejected, match=reason):
        thumbs.check_image(data)


def test_other_image_formats_are_refused_by_name() -> None:
    with pytest.raises(thumbs.ImageRejected, match="ICO images are not accepted"):
        thumbs.check_image(photo(32, 32, "ICO"))


def bomb() -> bytes:
    """A small PNG claiming more pixels than MAX_PIXELS (its header says 10000 x 10000)."""
    return photo(10_000, 10_000, "PNG")


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    data = bomb()
    assert len(data) < 2_000_000  # small on disk, 100 megapixels once decoded
    with pytest.raises(thumbs.ImageRejected, match="pixels"):
        thumbs.check_image(data)
    (tmp_path / "original").write_bytes(data)
    with pytest.raises(thumbs.ImageRejected, match="pixels"):
        thumbs.make_thumbnails(tmp_path / "original", tmp_path)
    assert list(tmp_path.glob("thumb-*")) == []


def test_thumbnails_have_the_sizes_and_keep_the_aspect(tmp_path: Path) -> None:
    (tmp_path / "original").write_bytes(photo(800, 600))
    made = thumbs.make_thumbnails(tmp_path / "original", tmp_path)
    assert made == {128: (128, 96), 256: (256, 192), 512: (512, 384)}
    for size, dims in made.items():
        with Image.open(tmp_path / f"thumb-{size}.jpg") as thumb:
            assert (thumb.format, thumb.size) == ("JPEG", dims)
            # Not blank: the picture's colours survived.
            assert len(thumb.convert("RGB").getcolors(maxcolors=100_000) or []) > 10


def test_a_small_image_is_not_enlarged(tmp_path: Path) -> None:
    (tmp_path / "original").write_bytes(photo(100, 50, "PNG"))
    assert thumbs.make_thumbnails(tmp_path / "original", tmp_path)[512] == (100, 50)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Orientation 6: the camera was turned; the stored 800x600 pixels show a 600x800 portrait.
    (tmp_path / "original").write_bytes(photo(800, 600, orientation=6))
    made = thumbs.make_thumbnails(tmp_path / "original", tmp_path)
    assert made[256] == (192, 256)


def test_redoing_rewrites_the_same_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "original").write_bytes(photo(640, 480, "PNG"))
    first = thumbs.make_thumbnails(tmp_path / "original", tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    second = thumbs.make_thumbnails(tmp_path / "original", tmp_path)
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_truncated_photo_passes_the_check_but_fails_to_decode(tmp_path: Path) -> None:
    data = photo(800, 600)
    cut = data[: len(data) // 2]
    # The header is whole: the front end cannot tell without decoding every pixel...
    assert thumbs.check_image(cut).format == "JPEG"
    (tmp_path / "original").write_bytes(cut)
    # ...the worker can, and refuses instead of writing half a picture.
    with pytest.raises(thumbs.ImageRejected, match="cannot decode"):
        thumbs.make_thumbnails(tmp_path / "original", tmp_path)
    assert list(tmp_path.glob("thumb-*")) == []


def test_write_atomic_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f"
    thumbs.write_atomic(target, b"one")
    thumbs.write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
    with pytest.raises(FileNotFoundError):
        thumbs.write_atomic(tmp_path / "missing" / "f", b"x")


def test_status_round_trip(tmp_path: Path) -> None:
    assert thumbs.read_status(tmp_path) == {}
    thumbs.write_status(tmp_path, {"state": "queued"})
    status = thumbs.read_status(tmp_path)
    assert status["state"] == "queued" and status["updated_at"] > 0
