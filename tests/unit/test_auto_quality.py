"""quality=auto on real product photos, checked with the reference ssimulacra2 package."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from ssimulacra2 import compute_ssimulacra2

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.domain import RequestOptions
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
