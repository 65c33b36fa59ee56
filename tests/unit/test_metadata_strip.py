"""A kept source is served without EXIF, GPS or XMP, and decodes to exactly the same pixels."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.metadata_strip import strip_metadata
from tests.support.images import decode

_GPS_IFD = 0x8825
_ORIENTATION = 0x0112
# Every JPEG and WebP of the corpus with something to remove: EXIF with GPS, XMP and comments
# (colorful-cups), Photoshop blocks and Adobe's CMYK transform, orientation, WebP's EXIF.
SOURCES = ["product-photos/colorful-cups.jpg", "product-photos/fallen-leaf.jpg",
           "photos/hubble_deep_field.jpg", "photos/rocket.jpg", "edge/pil_sample_cmyk.jpg",
           "edge/hopper_orientation_6.jpg", "edge/flower.webp"]


def assert_no_metadata(data: bytes) -> None:
    out = decode(data)
    exif = out.getexif()
    assert set(exif) <= {_ORIENTATION} and not exif.get_ifd(_GPS_IFD)
    assert not {"xmp", "XML:com.adobe.xmp", "comment", "photoshop"} & set(out.info)
    assert b"http://ns.adobe.com/xap/1.0/" not in data and b"GPS" not in data


@pytest.mark.parametrize("name", SOURCES)
def test_stripping_keeps_pixels_profile_and_orientation(corpus_dir: Path, name: str) -> None:
    source = (corpus_dir / name).read_bytes()
    original = decode(source)
    fmt = "webp" if name.endswith(".webp") else "jpeg"

    stripped = strip_metadata(source, fmt, keep_icc=True,
                              orientation=original.getexif().get(_ORIENTATION))

    assert stripped is not None and len(stripped) <= len(source)
    assert_no_metadata(stripped)
    out = decode(stripped)
    assert (out.format, out.mode, out.size) == (original.format, original.mode, original.size)
    assert out.tobytes() == original.tobytes()
    assert out.info.get("icc_profile") == original.info.get("icc_profile")
    assert out.getexif().get(_ORIENTATION, 1) == original.getexif().get(_ORIENTATION, 1)


def test_a_kept_photo_goes_without_its_gps(corpus_dir: Path) -> None:
    photo = corpus_dir / "product-photos" / "colorful-cups.jpg"
    source = photo.read_bytes()
    with Image.open(photo) as original:
        assert original.getexif().get_ifd(_GPS_IFD) and "xmp" in original.info
        pixels = original.tobytes()
        profile = original.info["icc_profile"]

    # At quality 95 the re-encoded photo is larger than the source, which is kept.
    result = transform_image(source, TransformOptions(quality=95, effort="fast"))

    assert result.kept_source and len(result.data) < len(source)
    assert_no_metadata(result.data)
    out = decode(result.data)
    assert out.tobytes() == pixels and out.info["icc_profile"] == profile


def test_a_kept_webp_goes_without_its_exif(corpus_dir: Path) -> None:
    source = (corpus_dir / "edge" / "flower.webp").read_bytes()
    assert b"EXIF" in source
    result = transform_image(source, TransformOptions(quality=95, format="webp"))
    assert result.kept_source and b"EXIF" not in result.data
    assert decode(result.data).tobytes() == decode(source).tobytes()


def test_a_kept_turned_photo_keeps_only_its_orientation(corpus_dir: Path) -> None:
    source = (corpus_dir / "edge" / "hopper_orientation_6.jpg").read_bytes()
    result = transform_image(source, TransformOptions(quality=95))
    assert result.kept_source
    out = decode(result.data)
    assert dict(out.getexif()) == {_ORIENTATION: 6}
    assert ImageOps.exif_transpose(out).size == (result.width, result.height)
    assert out.tobytes() == decode(source).tobytes()


def test_a_refused_profile_leaves_the_kept_source(corpus_dir: Path) -> None:
    source = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    stripped = strip_metadata(source, "jpeg", keep_icc=False)
    assert stripped is not None and b"ICC_PROFILE" in source
    assert b"ICC_PROFILE" not in stripped and "icc_profile" not in decode(stripped).info
    assert decode(stripped).tobytes() == decode(source).tobytes()


@pytest.mark.parametrize("damage", [
    lambda data: data[:len(data) // 2],  # no end of image
    lambda data: data[:2] + b"\x00" + data[2:],  # no marker where one must be
    lambda data: data[:4] + b"\xff\xff" + data[6:],  # a segment longer than the file
])
def test_a_jpeg_it_cannot_follow_is_not_kept(corpus_dir: Path, damage: object) -> None:
    assert callable(damage)
    source = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    assert strip_metadata(damage(source), "jpeg", keep_icc=True) is None


def test_avif_is_not_rewritten() -> None:
    assert strip_metadata(b"\x00\x00\x00\x1cftypavif", "avif", keep_icc=True) is None


def test_an_avif_is_kept_only_with_nothing_to_remove(corpus_dir: Path) -> None:
    with Image.open(corpus_dir / "product-photos" / "colorful-cups.jpg") as cups:
        exif = cups.info["exif"]  # with GPS
    sources = {}
    with Image.open(corpus_dir / "photos" / "rocket.jpg") as rocket:
        for name, params in (("plain", {}), ("with GPS", {"exif": exif})):
            out = BytesIO()
            rocket.save(out, "AVIF", quality=20, **params)
            sources[name] = out.getvalue()
    assert decode(sources["with GPS"]).getexif().get_ifd(_GPS_IFD)

    options = TransformOptions(quality=90, format="avif")
    plain = transform_image(sources["plain"], options)
    tagged = transform_image(sources["with GPS"], options)

    assert plain.kept_source and plain.data == sources["plain"]
    assert not tagged.kept_source and not decode(tagged.data).getexif().get_ifd(_GPS_IFD)
