"""The resize fast path: JPEGs shrink on load, then a short bicubic pass fits the box."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from pixpipe.codec import TransformOptions, transform_image
from tests.support.images import decode


@pytest.mark.parametrize(("box", "size"), [(1024, (1024, 640)), (800, (800, 500)),
                                           (500, (500, 312))])
def test_product_photos_shrink_on_load_to_the_same_bounds(
        corpus_dir: Path, monkeypatch: pytest.MonkeyPatch, box: int,
        size: tuple[int, int]) -> None:
    source = (corpus_dir / "product-photos" / "fallen-leaf.jpg").read_bytes()
    resized_from: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        resized_from.append(self.size)
        return resize(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    result = transform_image(source, TransformOptions(max_width=box, max_height=box, quality=95))
    monkeypatch.undo()
    # Decoded at 1/2 or 1/4 of 2560×1600: never below the box, never the full picture.
    assert resized_from and all(size[0] <= width < 2560 for width, _ in resized_from)
    assert (result.width, result.height) == decode(result.data).size == size
    with Image.open(BytesIO(source)) as full:
        plain = full.resize(size, Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(decode(result.data), dtype=np.float32)
                        - np.asarray(plain, dtype=np.float32)).mean()
    assert difference < 2.5


def test_a_turned_jpeg_shrinks_on_load_upright(corpus_dir: Path) -> None:
    source = (corpus_dir / "edge" / "hopper_orientation_6.jpg").read_bytes()
    with Image.open(BytesIO(source)) as stored:
        upright = ImageOps.exif_transpose(stored)
    result = transform_image(source, TransformOptions(max_height=upright.height // 2))
    assert (result.width, result.height) == decode(result.data).size
    assert result.height == upright.height // 2
    assert abs(result.width - upright.width / 2) <= 1
