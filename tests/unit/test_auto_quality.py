"""quality=auto on real product photos, checked with the reference ssimulacra2 package."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from ssimulacra2 import compute_ssimulacra2

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.domain import RequestOptions
from pixpipe.quality_score import ScoreReference, sample_tiles
from pixpipe.status_messages import options_from_proto, options_to_proto


def central_crop_png(im: Image.Image, side: int = 1024) -> BytesIO:
    left, top = (im.width - side) // 2, (im.height - side) // 2
    out = BytesIO()
    im.convert("RGB").crop((left, top, left + side, top + side)).save(out, "PNG",
                                                                      compress_level=0)
    out.seek(0)
    return out


@pytest.mark.parametrize(("name", "target"), [("darkest-hour.jpg", 70.0),
                                              ("fallen-leaf.jpg", 60.0)])
def test_auto_quality_reaches_the_target(corpus_dir: Path, name: str, target: float) -> None:
    source = (corpus_dir / "product-photos" / name).read_bytes()
    auto = transform_image(source, TransformOptions(target_score=target))
    assert auto.quality_used is not None and auto.score is not None
    assert auto.score >= target
    # One step lower would not have reached it: the search found the lowest quality.
    lower = transform_image(source, TransformOptions(quality=auto.quality_used - 3))
    assert len(lower.data) < len(auto.data)
    with Image.open(BytesIO(source)) as original, Image.open(BytesIO(auto.data)) as out:
        measured = compute_ssimulacra2(central_crop_png(original), central_crop_png(out))
    # The tile score tracks the reference within a few points (docs/codec.md).
    assert measured >= target - 3


def test_auto_quality_round_trips_through_the_wire() -> None:
    options = RequestOptions(quality="auto", target_score=75, effort="max")
    message = options_to_proto(options)
    assert message.quality_auto and not message.HasField("quality")
    assert options_from_proto(message) == options
    assert options_from_proto(options_to_proto(RequestOptions(quality=40))).quality == 40


def test_measure_quality_scores_a_fixed_quality_as_auto_would(corpus_dir: Path) -> None:
    source = (corpus_dir / "product-photos" / "darkest-hour.jpg").read_bytes()
    auto = transform_image(source, TransformOptions(target_score=70.0))
    assert auto.quality_used is not None and auto.score is not None
    measured = transform_image(source, TransformOptions(quality=auto.quality_used,
                                                        measure_quality=True))
    # The same tiles, encoder and scale: the same score, and the same output bytes.
    assert measured.score == auto.score and measured.data == auto.data
    assert measured.quality_used == auto.quality_used
    assert transform_image(source, TransformOptions(quality=auto.quality_used)).score is None


def test_measure_quality_round_trips_through_the_wire() -> None:
    options = RequestOptions(quality=60, measure_quality=True)
    message = options_to_proto(options)
    assert message.measure_quality and message.quality == 60
    assert options_from_proto(message) == options
    assert options_from_proto(options_to_proto(RequestOptions())).measure_quality is None


@pytest.mark.parametrize(("size", "mosaic"), [((2560, 1600), (256, 256)),
                                              ((1411, 1411), (256, 256)),
                                              ((600, 400), (128, 128)),
                                              ((300, 200), (128, 128)),
                                              ((200, 120), (200, 120))])
def test_small_pictures_are_searched_on_smaller_tiles(size: tuple[int, int],
                                                      mosaic: tuple[int, int]) -> None:
    assert sample_tiles(Image.new("RGB", size)).size == mosaic


def test_a_mosaic_too_small_for_six_scales_scores_on_the_package_scale(
        corpus_dir: Path) -> None:
    with Image.open(corpus_dir / "photos" / "coffee.png") as coffee:
        picture = coffee.convert("RGB")
    tiles = sample_tiles(picture)
    reference = ScoreReference(tiles)
    assert reference.score(tiles) == 100.0
    out = BytesIO()
    tiles.save(out, "JPEG", quality=50)
    with Image.open(out) as decoded:
        distorted = decoded.convert("RGB")
    # Five scales, the sixth taken as flawless: a JPEG q50 score, not one with the weights
    # of one channel applied to the next.
    assert 40 < reference.score(distorted) < 90


def test_a_small_picture_reaches_the_target(corpus_dir: Path) -> None:
    source = (corpus_dir / "photos" / "coffee.png").read_bytes()
    auto = transform_image(source, TransformOptions(target_score=65.0))
    assert auto.score is not None and auto.score >= 65.0
    assert auto.quality_used is not None
    lower = transform_image(source, TransformOptions(quality=auto.quality_used - 3))
    assert len(lower.data) < len(auto.data)
