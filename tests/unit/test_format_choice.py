"""format=auto: the smallest of JPEG, WebP and AVIF at one score, on the real corpus."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.domain import RequestOptions
from pixpipe.format_choice import CANDIDATES
from pixpipe.status_messages import options_from_proto, options_to_proto
from tests.support.images import decode

ENCODERS = {"webp": "libwebp", "avif": "libavif", "jpeg": "libjpeg-turbo"}


def test_the_smallest_format_that_looks_as_good_as_the_jpeg_asked_for(
        corpus_dir: Path) -> None:
    source = (corpus_dir / "product-photos" / "darkest-hour.jpg").read_bytes()
    jpeg = transform_image(source, TransformOptions(quality=50, measure_quality=True))
    auto = transform_image(source, TransformOptions(quality=50, format="auto"))
    assert auto.format in CANDIDATES and auto.format != "jpeg"
    assert auto.extension == {"jpeg": "jpg"}.get(auto.format, auto.format)
    assert auto.encoder == ENCODERS[auto.format] and auto.quality_used is not None
    assert jpeg.score is not None and auto.score is not None and auto.score >= jpeg.score
    assert len(auto.data) < len(jpeg.data) * 0.8
    assert str(decode(auto.data).format).lower() == auto.format


def test_with_quality_auto_every_format_aims_at_the_target(corpus_dir: Path) -> None:
    source = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    auto = transform_image(source, TransformOptions(format="auto", target_score=75))
    assert auto.score is not None and auto.score >= 75
    jpeg = transform_image(source, TransformOptions(target_score=75))
    assert len(auto.data) <= len(jpeg.data)


@pytest.mark.parametrize(("folder", "name"), [
    ("edge", "hopper_orientation_6.jpg"), ("edge", "pil_sample_cmyk.jpg"),
    ("edge", "hopper.gif"), ("edge", "flower.webp"), ("photos", "logo.png"),
    ("photos", "camera.png")])
def test_edge_cases_come_out_upright_opaque_and_never_larger_in_their_own_format(
        corpus_dir: Path, folder: str, name: str) -> None:
    source = (corpus_dir / folder / name).read_bytes()
    fixed = transform_image(source, TransformOptions())
    auto = transform_image(source, TransformOptions(format="auto"))
    out = decode(auto.data)
    assert out.size == (fixed.width, fixed.height) == (auto.width, auto.height)
    assert out.mode in ("RGB", "L") and (out.mode == "L") == (decode(fixed.data).mode == "L"
                                                               and auto.format == "jpeg")
    if auto.format == auto.source_format:
        assert len(auto.data) <= len(source)


def test_the_colour_profile_is_kept_and_a_grey_one_not_put_on_colour(corpus_dir: Path) -> None:
    photos = corpus_dir / "photos"
    with Image.open(photos / "hubble_deep_field.jpg") as original:
        hubble_icc = original.info["icc_profile"]
    result = transform_image((photos / "hubble_deep_field.jpg").read_bytes(),
                             TransformOptions(format="auto"))
    assert decode(result.data).info.get("icc_profile") == hubble_icc
    grey = BytesIO()
    with Image.open(photos / "camera.png") as camera:
        body = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
        body[16:20] = b"GRAY"
        camera.save(grey, "PNG", icc_profile=bytes(body))
    out = transform_image(grey.getvalue(), TransformOptions(format="auto"))
    expected = bytes(body) if out.format == "jpeg" else None
    assert decode(out.data).info.get("icc_profile") == expected


def test_format_auto_round_trips_through_the_wire() -> None:
    options = RequestOptions(format="auto", quality="auto", target_score=80)
    assert options_to_proto(options).format != 0
    assert options_from_proto(options_to_proto(options)) == options
