"""Helpers for tests that look at encoded images."""

from __future__ import annotations

from io import BytesIO

from PIL import Image, ImageChops, ImageStat


def decode(data: bytes) -> Image.Image:
    """Open and fully decode ``data`` (a truncated file fails here, not later)."""
    im = Image.open(BytesIO(data))
    im.load()
    return im


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value, 0-255."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3
