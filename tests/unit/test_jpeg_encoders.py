"""The JPEG encoder each effort picks, on real product photos (4 MP)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.domain import Effort
from pixpipe.jpeg_encoders import EFFORTS, encode_jpeg
from tests.support.images import decode, mean_difference

# Two photos keep this quick: one colour, the greyscale one.
NAMES = ["darkest-hour.jpg", "grey.jpg"]


@pytest.fixture(scope="module")
def product_photos(corpus_dir: Path) -> Path:
    return corpus_dir / "product-photos"


@pytest.mark.parametrize("name", NAMES)
def test_each_effort_encodes_a_decodable_jpeg_and_max_is_smallest(
        product_photos: Path, name: str) -> None:
    source = (product_photos / name).read_bytes()
    original = decode(source)
    results = {effort: transform_image(source, TransformOptions(effort=effort))
               for effort in EFFORTS}
    for effort, result in results.items():
        out = decode(result.data)
        assert (out.format, out.mode, out.size) == ("JPEG", original.mode, original.size)
        assert mean_difference(out, original) < 4
        assert (result.effort, result.quality_used, result.kept_source) == (effort, 50, False)
        # Progressive for the defaults and max; fast is baseline.
        assert bool(out.info.get("progressive")) == (effort != "fast")
    assert results["fast"].encoder == results["balanced"].encoder == "libjpeg-turbo"
    assert results["max"].encoder == "mozjpeg"
    sizes = {effort: len(result.data) for effort, result in results.items()}
    assert sizes["max"] < sizes["balanced"] < sizes["fast"]


@pytest.mark.parametrize("effort", EFFORTS)
def test_icc_kept_and_orientation_applied(product_photos: Path, effort: Effort) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    with Image.open(product_photos / "darkest-hour.jpg") as photo:
        exif = Image.Exif()
        exif[0x0112] = 6  # stored turned: display it a quarter turn clockwise
        tagged = BytesIO()
        photo.save(tagged, "JPEG", quality=90, exif=exif, icc_profile=srgb)
        upright = photo.transpose(Image.Transpose.ROTATE_270)
    result = transform_image(tagged.getvalue(), TransformOptions(effort=effort))
    out = decode(result.data)
    assert out.size == (result.width, result.height) == (1600, 2560)
    # max leaves out a profile that only restates sRGB (tests/unit/test_colour_profiles.py).
    assert out.info.get("icc_profile") == (None if effort == "max" else srgb)
    assert not dict(out.getexif())
    assert mean_difference(out, upright) < 4


def test_a_kept_source_has_no_encoder(product_photos: Path) -> None:
    with Image.open(product_photos / "grey.jpg") as grey:
        small = BytesIO()
        grey.save(small, "JPEG", quality=5)
    result = transform_image(small.getvalue(), TransformOptions(quality=95, effort="max"))
    assert (result.kept_source, result.encoder, result.quality_used) == (True, None, None)



def test_balanced_scales_its_table_before_clipping_as_mozjpeg_does() -> None:
    picture = Image.new("RGB", (64, 64), (120, 30, 200))
    tables = {}
    for quality in (50, 80):
        with JpegImagePlugin.JpegImageFile(BytesIO(encode_jpeg(picture, quality, None,
                                                               "balanced"))) as out:
            tables[quality] = out.quantization
    # Baseline (8-bit) tables: the highest frequency clips to 255 at q50; at q80 it is the
    # unclipped 524 scaled to 40 %, not 255 scaled (102).
    assert list(tables[50][0])[-1] == 255 and list(tables[80][0])[-1] == 210
    assert tables[80][0] == tables[80][1]
