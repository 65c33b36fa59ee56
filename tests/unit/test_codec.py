"""Unit tests for pixpipe.codec on the real corpus: every photo, every edge case, every option."""

from __future__ import annotations

import pickle
import random
import struct
import zlib
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageOps

from pixpipe.codec import (
    MAX_ICC_BYTES,
    TransformOptions,
    TransformResult,
    transform_image,
)
from pixpipe.domain import Effort, OutputFormat
from pixpipe.errors import DecodeError
from pixpipe.metadata_strip import strip_metadata
from tests.support.images import decode, mean_difference

PHOTOS = ["rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "coffee.png", "chelsea.png",
          "astronaut.png", "logo.png", "camera.png"]
JPEG_PHOTOS = [name for name in PHOTOS if name.endswith(".jpg")]
PNG_PHOTOS = [name for name in PHOTOS if name.endswith(".png")]
# libjpeg's standard luminance table (ITU T.81 Annex K), which is exactly its quality-50 table.
STANDARD_LUMINANCE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]


@pytest.fixture(scope="module")
def photos(corpus_dir: Path) -> Path:
    return corpus_dir / "photos"


@pytest.fixture(scope="module")
def edge(corpus_dir: Path) -> Path:
    return corpus_dir / "edge"


def jpeg_bytes(im: Image.Image, **params: object) -> bytes:
    out = BytesIO()
    im.save(out, "JPEG", **params)
    return out.getvalue()


def decode_error(source: bytes, max_pixels: int = 50_000_000) -> str:
    with pytest.raises(DecodeError) as caught:
        transform_image(source, TransformOptions(max_pixels=max_pixels))
    return caught.value.reason


def is_white(im: Image.Image, xy: tuple[int, int]) -> bool:
    pixel = im.getpixel(xy)
    assert isinstance(pixel, tuple)
    return all(channel >= 245 for channel in pixel)


def png_declaring(width: int, height: int) -> bytes:
    """A 60-odd-byte PNG whose header claims ``width`` x ``height`` 1-bit pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# --- every photo ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", PHOTOS)
def test_every_photo_becomes_a_decodable_progressive_jpeg(photos: Path, name: str) -> None:
    source = (photos / name).read_bytes()
    result = transform_image(source, TransformOptions())
    out = decode(result.data)
    assert (result.format, result.extension, out.format) == ("jpeg", "jpg", "JPEG")
    assert out.size == (result.width, result.height) == (result.source_width,
                                                          result.source_height)
    assert out.info.get("progressive") or out.info.get("progression")
    with Image.open(photos / name) as original:
        assert out.size == original.size
        assert result.source_format == original.format.lower()  # type: ignore[union-attr]
        assert mean_difference(out, original.convert("RGB")) < 6


@pytest.mark.parametrize("name", JPEG_PHOTOS)
def test_jpeg_photos_never_grow(photos: Path, name: str) -> None:
    source = (photos / name).read_bytes()
    for quality in (20, 50, 95):
        result = transform_image(source, TransformOptions(quality=quality))
        assert len(result.data) <= len(source)
        assert result.kept_source == (result.data == strip_metadata(source, "jpeg",
                                                                    keep_icc=True))


@pytest.mark.parametrize("name", PNG_PHOTOS)
def test_png_photos_come_out_as_jpeg(photos: Path, name: str) -> None:
    result = transform_image((photos / name).read_bytes(), TransformOptions())
    assert (result.source_format, result.format, result.kept_source) == ("png", "jpeg", False)
    assert decode(result.data).format == "JPEG"


def test_greyscale_stays_single_channel_in_jpeg(photos: Path) -> None:
    source = (photos / "camera.png").read_bytes()
    assert decode(transform_image(source, TransformOptions()).data).mode == "L"
    assert decode(transform_image(source, TransformOptions(format="webp")).data).mode == "RGB"


# --- edge cases ----------------------------------------------------------------------------

def test_exif_orientation_is_applied(edge: Path) -> None:
    source = (edge / "hopper_orientation_6.jpg").read_bytes()
    result = transform_image(source, TransformOptions())
    assert not result.kept_source
    with Image.open(edge / "hopper_orientation_6.jpg") as stored:
        assert stored.getexif()[0x0112] == 6
        upright = ImageOps.exif_transpose(stored)
        out = decode(result.data)
        assert mean_difference(out, upright) < 10
        assert mean_difference(out, stored) > 5 * mean_difference(out, upright)
    assert 0x0112 not in out.getexif()


def test_orientation_swaps_a_landscape_photo_and_its_box(photos: Path) -> None:
    with Image.open(photos / "rocket.jpg") as rocket:
        exif = Image.Exif()
        exif[0x0112] = 6
        source = jpeg_bytes(rocket, quality=90, exif=exif)
        upright = rocket.transpose(Image.Transpose.ROTATE_270)
    full = transform_image(source, TransformOptions())
    assert (full.width, full.height) == (full.source_width, full.source_height) == (427, 640)
    small = transform_image(source, TransformOptions(max_width=100, max_height=100))
    assert (small.width, small.height) == (67, 100)
    reference = upright.resize((67, 100), Image.Resampling.LANCZOS)
    assert mean_difference(decode(small.data), reference) < 6


def test_cmyk_jpeg_becomes_rgb_with_pillows_colours(edge: Path) -> None:
    result = transform_image((edge / "pil_sample_cmyk.jpg").read_bytes(),
                             TransformOptions(quality=90))
    out = decode(result.data)
    assert out.mode == "RGB"
    assert "icc_profile" not in out.info
    with Image.open(edge / "pil_sample_cmyk.jpg") as cmyk:
        assert cmyk.mode == "CMYK"
        pillows = cmyk.convert("RGB")
    # A tiny, saturated picture: 4:2:0 chroma subsampling alone costs about 6 here, while an
    # uninverted Adobe CMYK is ~240 off and swapped channels ~20.
    assert mean_difference(out, pillows) < 8


def test_cmyk_with_an_unusable_profile_falls_back_to_pillows_conversion(edge: Path) -> None:
    with Image.open(edge / "pil_sample_cmyk.jpg") as cmyk:
        cmyk.load()
    # lcms cannot create a CMYK profile and none ships with the corpus, so only the fallback
    # is exercised: garbage, and a valid profile for the wrong colour space.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for profile in (b"not an icc profile", srgb):
        result = transform_image(jpeg_bytes(cmyk, icc_profile=profile), TransformOptions())
        out = decode(result.data)
        assert out.mode == "RGB"
        assert "icc_profile" not in out.info
        assert mean_difference(out, cmyk.convert("RGB")) < 10


def test_rgba_logo_is_flattened_onto_white(photos: Path) -> None:
    with Image.open(photos / "logo.png") as logo:
        logo.load()
    plain = decode(transform_image((photos / "logo.png").read_bytes(), TransformOptions()).data)
    assert plain.mode == "RGB"
    assert mean_difference(plain, logo.convert("RGB")) < 4
    # The shipped logo is opaque everywhere, so punch a black, fully transparent corner in it.
    alpha = logo.getchannel("A")
    alpha.paste(0, (0, 0, 100, 100))
    holed = logo.copy()
    holed.paste((0, 0, 0), (0, 0, 100, 100))
    holed.putalpha(alpha)
    source = BytesIO()
    holed.save(source, "PNG")
    for fmt in ("jpeg", "webp", "avif"):
        out = decode(transform_image(source.getvalue(), TransformOptions(format=fmt)).data)
        assert out.mode == "RGB"
        assert is_white(out, (50, 50))
        assert mean_difference(out.crop((150, 150, 500, 500)),
                               logo.convert("RGB").crop((150, 150, 500, 500))) < 5


def test_palette_gif_and_its_transparent_index(edge: Path) -> None:
    source = (edge / "hopper.gif").read_bytes()
    out = decode(transform_image(source, TransformOptions(quality=90)).data)
    with Image.open(edge / "hopper.gif") as gif:
        assert gif.mode == "P"
        assert mean_difference(out, gif.convert("RGB")) < 6
        see_through = BytesIO()
        gif.save(see_through, "GIF", transparency=gif.getpixel((0, 0)))
    out = decode(transform_image(see_through.getvalue(), TransformOptions()).data)
    assert is_white(out, (0, 0))


def test_animated_gif_keeps_its_first_frame(edge: Path) -> None:
    with Image.open(edge / "hopper.gif") as gif:
        first = gif.convert("RGB")
    animation = BytesIO()
    first.save(animation, "GIF", save_all=True,
               append_images=[ImageOps.invert(first), ImageOps.flip(first)])
    assert Image.open(BytesIO(animation.getvalue())).n_frames == 3  # type: ignore[attr-defined]
    out = decode(transform_image(animation.getvalue(), TransformOptions(quality=90)).data)
    assert mean_difference(out, first) < 8


def test_webp_source(edge: Path) -> None:
    source = (edge / "flower.webp").read_bytes()
    as_jpeg = transform_image(source, TransformOptions())
    assert (as_jpeg.source_format, as_jpeg.format, decode(as_jpeg.data).size) == (
        "webp", "jpeg", (480, 360))
    as_webp = transform_image(source, TransformOptions(format="webp"))
    assert len(as_webp.data) <= len(source)


def test_a_converted_image_keeps_the_requested_format_even_when_larger(edge: Path) -> None:
    source = (edge / "flower.webp").read_bytes()
    result = transform_image(source, TransformOptions(quality=95))
    assert len(result.data) > len(source)
    assert (result.format, result.kept_source, decode(result.data).format) == (
        "jpeg", False, "JPEG")


# --- refusals ------------------------------------------------------------------------------

def test_truncated_jpeg(edge: Path) -> None:
    assert decode_error((edge / "truncated_jpeg.jpg").read_bytes()) == "truncated image data"


def test_truncated_png(photos: Path) -> None:
    source = (photos / "coffee.png").read_bytes()
    assert decode_error(source[: len(source) // 2]) == "truncated image data"


def test_broken_png(edge: Path) -> None:
    assert decode_error((edge / "broken.png").read_bytes()) == "corrupt PNG data"


@pytest.mark.parametrize("source", [
    pytest.param(random.Random(7).randbytes(4096), id="random-bytes"),
    pytest.param(b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
                 b"<body><h1>Not Found</h1></body></html>\n", id="html-page"),
    pytest.param(b"", id="empty"),
    pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", id="pdf"),
])
def test_non_images(source: bytes) -> None:
    assert decode_error(source) == "not an image"


def test_formats_outside_the_allow_list_are_refused(photos: Path) -> None:
    with Image.open(photos / "chelsea.png") as chelsea:
        for fmt in ("PPM", "TGA", "PCX"):
            other = BytesIO()
            chelsea.save(other, fmt)
            assert decode_error(other.getvalue()) == "not an image"


@pytest.mark.parametrize(("width", "height", "max_pixels", "limit"), [
    pytest.param(20_000, 20_000, 50_000_000, "50", id="beyond-pillows-own-limit"),
    pytest.param(10_000, 10_000, 50_000_000, "50", id="where-pillow-only-warns"),
    pytest.param(10_000, 6_000, 50_000_000, "50", id="between-ours-and-pillows"),
    pytest.param(10_000, 10_000, 200_000_000, "89.4785", id="pillows-warning-refuses-too"),
    pytest.param(2_000, 1_000, 1_500_000, "1.5", id="small-limit"),
])
def test_decompression_bombs(width: int, height: int, max_pixels: int, limit: str) -> None:
    bomb = png_declaring(width, height)
    assert len(bomb) < 100
    assert decode_error(bomb, max_pixels=max_pixels) == f"image exceeds {limit} megapixels"


def test_pixel_limit_applies_to_real_photos(photos: Path) -> None:
    source = (photos / "rocket.jpg").read_bytes()
    assert decode_error(source, max_pixels=640 * 427 - 1) == "image exceeds 0.273279 megapixels"
    assert transform_image(source, TransformOptions(max_pixels=640 * 427)).width == 640


# --- options -------------------------------------------------------------------------------

@pytest.mark.parametrize("effort", ["fast", "balanced", "max"])
@pytest.mark.parametrize("name", ["coffee.png", "retina.jpg"])
def test_quality_is_honoured(photos: Path, name: str, effort: Effort) -> None:
    source = (photos / name).read_bytes()
    low, mid, high = (transform_image(source, TransformOptions(quality=q, effort=effort)).data
                      for q in (20, 50, 90))
    assert len(low) < len(mid) < len(high)
    tables = [decode(data).quantization[0] for data in (low, mid, high)]  # type: ignore[attr-defined]
    # fast keeps libjpeg's own tables; balanced and max use mozjpeg's (docs/codec.md).
    assert (tables[1] == STANDARD_LUMINANCE) == (effort == "fast")
    assert all(h <= m <= lo for lo, m, h in zip(*tables, strict=True))
    assert sum(tables[2]) < sum(tables[1]) < sum(tables[0])


@pytest.mark.parametrize(("name", "max_width", "max_height", "size"), [
    ("retina.jpg", 300, None, (300, 300)),
    ("retina.jpg", None, 141, (141, 141)),
    ("hubble_deep_field.jpg", 500, 200, (229, 200)),
    ("hubble_deep_field.jpg", 100, 1000, (100, 87)),
    ("coffee.png", 300, 300, (300, 200)),
    ("chelsea.png", 5000, 5000, (451, 300)),
    ("rocket.jpg", 640, None, (640, 427)),
    ("camera.png", 1, 1, (1, 1)),
])
def test_fit_inside_the_box_never_upscaled(photos: Path, name: str, max_width: int | None,
                                           max_height: int | None,
                                           size: tuple[int, int]) -> None:
    source = (photos / name).read_bytes()
    for fmt in ("jpeg", "webp"):
        result = transform_image(source, TransformOptions(
            max_width=max_width, max_height=max_height, format=fmt))
        assert (result.width, result.height) == decode(result.data).size == size


def test_reduced_jpeg_decoding_keeps_the_picture(photos: Path) -> None:
    """The draft (1/2, 1/4, 1/8 scale) decode must look like a full decode then LANCZOS."""
    source = (photos / "retina.jpg").read_bytes()
    result = transform_image(source, TransformOptions(max_width=150, quality=95))
    with Image.open(photos / "retina.jpg") as retina:
        reference = retina.resize((150, 150), Image.Resampling.LANCZOS)
    assert mean_difference(decode(result.data), reference) < 3


def test_resized_output_is_not_replaced_by_the_source(photos: Path) -> None:
    with Image.open(photos / "rocket.jpg") as rocket:
        source = jpeg_bytes(rocket, quality=5)
    result = transform_image(source, TransformOptions(quality=95, max_width=600))
    assert (result.kept_source, result.width) == (False, 600)


def test_source_kept_when_reencoding_would_grow_it(photos: Path) -> None:
    with Image.open(photos / "rocket.jpg") as rocket:
        source = jpeg_bytes(rocket, quality=5)
    result = transform_image(source, TransformOptions(quality=95))
    # Pillow copied rocket's comment into the source; the kept copy goes without it.
    stripped = strip_metadata(source, "jpeg", keep_icc=True)
    assert stripped is not None and b"cmp3" in source and b"cmp3" not in stripped
    assert result == TransformResult(stripped, "jpeg", "jpg", 640, 427, "jpeg", 640, 427,
                                     kept_source=True)


@pytest.mark.parametrize(("fmt", "pillow_name", "extension"), [
    ("webp", "WEBP", "webp"), ("avif", "AVIF", "avif"), ("jpeg", "JPEG", "jpg")])
def test_output_formats(photos: Path, fmt: OutputFormat, pillow_name: str,
                        extension: str) -> None:
    source = (photos / "astronaut.png").read_bytes()
    low = transform_image(source, TransformOptions(format=fmt, quality=20))
    high = transform_image(source, TransformOptions(format=fmt, quality=90))
    assert (high.format, high.extension) == (fmt, extension)
    out = decode(high.data)
    assert (out.format, out.mode, out.size) == (pillow_name, "RGB", (512, 512))
    assert len(low.data) < len(high.data)
    with Image.open(photos / "astronaut.png") as astronaut:
        assert mean_difference(out, astronaut) < 5


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_metadata_stripped_but_icc_kept(photos: Path, fmt: OutputFormat) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    with Image.open(photos / "coffee.png") as coffee:
        exif = Image.Exif()
        exif[0x010F] = "Camera maker"  # Make
        exif[0x0112] = 1
        tagged = jpeg_bytes(coffee, quality=95, exif=exif, icc_profile=srgb,
                            comment=b"private note", xmp=b"<x:xmpmeta>private</x:xmpmeta>")
    hubble = (photos / "hubble_deep_field.jpg").read_bytes()
    with Image.open(photos / "hubble_deep_field.jpg") as original:
        assert "exif" in original.info and "xmp" in original.info
        hubble_icc = original.info["icc_profile"]
    for source, icc in ((tagged, srgb), (hubble, hubble_icc)):
        result = transform_image(source, TransformOptions(format=fmt))
        assert not result.kept_source
        out = decode(result.data)
        assert out.info.get("icc_profile") == icc
        assert not out.info.get("exif") and not dict(out.getexif())
        assert not out.info.get("xmp") and "comment" not in out.info
        assert b"private" not in result.data and b"Camera maker" not in result.data


def test_a_greyscale_profile_is_not_attached_to_rgb_output(photos: Path) -> None:
    grey_profile = BytesIO()
    with Image.open(photos / "camera.png") as camera:
        # lcms cannot build a grey profile here, so borrow an RGB one's body with a GRAY tag:
        # only the header's colour space decides what pixels it may be attached to.
        body = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
        body[16:20] = b"GRAY"
        camera.save(grey_profile, "PNG", icc_profile=bytes(body))
    as_jpeg = decode(transform_image(grey_profile.getvalue(), TransformOptions()).data)
    assert (as_jpeg.mode, as_jpeg.info.get("icc_profile")) == ("L", bytes(body))
    as_webp = decode(transform_image(grey_profile.getvalue(),
                                     TransformOptions(format="webp")).data)
    assert (as_webp.mode, as_webp.info.get("icc_profile")) == ("RGB", None)


def oversized_profile() -> bytes:
    """A well-formed sRGB profile padded past the limit, its header's size field to match."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile += bytes(MAX_ICC_BYTES + 100_000 - len(profile))
    profile[0:4] = len(profile).to_bytes(4, "big")
    return bytes(profile)


def garbage_profile() -> bytes:
    """An RGB profile's header (so it looks right for RGB pixels) over bytes lcms rejects."""
    header = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()[:128]
    return header + b"\xff" * 1000


@pytest.mark.parametrize("profile", [oversized_profile(), garbage_profile()],
                         ids=["larger than 1 MB", "garbage"])
@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_a_refused_profile_is_dropped_and_the_image_still_made(
        photos: Path, profile: bytes, fmt: OutputFormat) -> None:
    with Image.open(photos / "rocket.jpg") as rocket:
        pixels = rocket.convert("RGB")
        source = jpeg_bytes(rocket, quality=90, icc_profile=profile)
    assert decode(source).info["icc_profile"] == profile

    result = transform_image(source, TransformOptions(format=fmt))

    out = decode(result.data)
    assert not result.kept_source and "icc_profile" not in out.info
    assert len(result.data) < 100_000 and mean_difference(out, pixels) < 6


def test_a_kept_source_loses_a_refused_profile(photos: Path) -> None:
    with Image.open(photos / "rocket.jpg") as rocket:
        source = jpeg_bytes(rocket, quality=5, icc_profile=oversized_profile())
    result = transform_image(source, TransformOptions(quality=95))
    assert result.kept_source and len(result.data) < MAX_ICC_BYTES
    out = decode(result.data)
    assert "icc_profile" not in out.info and out.tobytes() == decode(source).tobytes()


def test_sixteen_bit_greyscale_is_scaled_not_clipped(photos: Path) -> None:
    with Image.open(photos / "camera.png") as camera:
        wide = camera.convert("I").point(lambda value: value * 257).convert("I;16")
        source = BytesIO()
        wide.save(source, "PNG")
        out = decode(transform_image(source.getvalue(), TransformOptions(quality=90)).data)
        assert mean_difference(out, camera) < 4


# --- process pool --------------------------------------------------------------------------

def test_runs_in_a_process_pool(photos: Path) -> None:
    options = TransformOptions(quality=40, max_width=200, format="webp")
    assert pickle.loads(pickle.dumps(options)) == options
    source = (photos / "rocket.jpg").read_bytes()
    with ProcessPoolExecutor(max_workers=1) as pool:
        result = pool.submit(transform_image, source, options).result(timeout=60)
    assert result == transform_image(source, options)
    with pytest.raises(DecodeError, match="not an image"), \
            ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(transform_image, b"plain text", options).result(timeout=60)
