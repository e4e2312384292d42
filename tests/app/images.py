"""Real image files for the front end and thumbnail tests, made with Pillow."""

from __future__ import annotations

from io import BytesIO

from PIL import Image, ImageDraw


def photo(width: int = 800, height: int = 600, fmt: str = "JPEG", orientation: int = 0) -> bytes:
    """A picture with something in it (not a flat colour), optionally with an EXIF orientation."""
    image = Image.new("RGB", (width, height), (30, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 8, height // 8, width // 2, height // 2), fill=(240, 200, 40))
    draw.rectangle((width // 2, height // 2, width - 10, height - 10), fill=(200, 40, 40))
    out = BytesIO()
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(out, fmt, exif=exif)
    else:
        image.save(out, fmt)
    return out.getvalue()
