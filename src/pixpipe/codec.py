"""The image transform: decode safely, orient, flatten to RGB, fit inside a box, re-encode."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pixpipe.auto_quality import search_quality, tile_score
from pixpipe.colour_profiles import restates_srgb
from pixpipe.domain import Effort, EncodedFormat, OutputFormat
from pixpipe.errors import DecodeError
from pixpipe.format_choice import choose_format
from pixpipe.jpeg_encoders import encode_jpeg, encoder_name
from pixpipe.metadata_strip import strip_metadata

# "auto": the smallest of the formats Pillow encodes at one score (format_choice).

# Everything else Pillow can read (PSD, EPS through Ghostscript, ICO, ...) is attack surface
# that product photos do not need.
_INPUT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
_EXTENSIONS: dict[EncodedFormat, str] = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)
# Pillow's decoders report malformed input with any of these, not with one exception type.
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# EXIF orientations 5-8 store the picture turned by a quarter, so width and height swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112
_SRGB = ImageCms.createProfile("sRGB")
# Real colour profiles are a few KB (sRGB 3 KB, the largest print profiles some hundred KB);
# anything larger only costs every output its size and lcms its time to parse.
MAX_ICC_BYTES = 1024 * 1024
_ENCODERS: dict[str, str] = {"webp": "libwebp", "avif": "libavif"}


@dataclass(frozen=True)
class TransformOptions:
    quality: int = 50
    max_width: int | None = None
    max_height: int | None = None
    format: OutputFormat = "jpeg"
    max_pixels: int = 50_000_000
    effort: Effort = "balanced"
    # Set: quality=auto, the lowest quality whose SSIMULACRA2 score reaches this target.
    target_score: float | None = None
    # With a fixed quality, also score the output (the tile score quality=auto uses).
    measure_quality: bool = False


@dataclass(frozen=True)
class TransformResult:
    """The encoded image; sizes are upright (after the EXIF orientation is applied)."""

    data: bytes
    format: str
    extension: str
    width: int
    height: int
    source_format: str
    source_width: int
    source_height: int
    kept_source: bool
    # The receipt: what made ``data`` (None when the source was kept as it was).
    quality_used: int | None = None
    encoder: str | None = None
    effort: Effort = "balanced"
    score: float | None = None


def transform_image(source: bytes, options: TransformOptions) -> TransformResult:
    """Re-encode ``source`` as ``options`` ask.

    Raises DecodeError with a short readable reason for anything that is not a safely
    decodable image.
    """
    with _decoder_errors(source, "", options.max_pixels):
        opened = Image.open(BytesIO(source), formats=_INPUT_FORMATS)
    with opened as im:
        # A JPEG carrying extra pictures (phones' depth maps) opens as "MPO".
        source_format = "jpeg" if im.format == "MPO" else (im.format or "").lower()
        width, height = im.size
        if width * height > options.max_pixels:
            raise _too_large(options.max_pixels)
        with _decoder_errors(source, source_format, options.max_pixels):
            orientation = im.getexif().get(_ORIENTATION_TAG)
            turned = orientation in _QUARTER_TURNS
            upright = (height, width) if turned else (width, height)
            target = _fit(upright, options.max_width, options.max_height)
            full_size = im.size
            if target != upright:
                # Shrink on load: JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT almost for
                # free; the smallest scale still covering the target leaves a short bicubic
                # pass (docs/codec.md: 2.6-5x faster than LANCZOS over the full decode).
                stored = (target[1], target[0]) if turned else target
                im.draft(None, stored)
            shrunk_on_load = im.size != full_size
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
        profile = _usable_profile(im.info.get("icc_profile"))
        has_metadata = (any(im.info.get(key) for key in ("exif", "xmp"))
                        or (profile is None and bool(im.info.get("icc_profile"))))
        # After CMYK conversion the pixels are sRGB, whatever profile the source carried.
        icc = None if im.mode == "CMYK" else profile
        fmt: EncodedFormat = "jpeg" if options.format == "auto" else options.format
        picture = _to_output_mode(im, fmt, profile)
        if picture.size != target:
            resample = (Image.Resampling.BICUBIC if shrunk_on_load
                        else Image.Resampling.LANCZOS)
            picture = picture.resize(target, resample, reducing_gap=2.0)
        if icc and not _profile_fits(icc, picture.mode):
            icc = None
        # max is the smallest file: a profile restating sRGB is ~3 KB no viewer needs.
        # The other efforts keep every usable profile, as they always have.
        drop_srgb = options.effort == "max" and icc is not None and restates_srgb(icc)
        if drop_srgb:
            icc = None
        quality, score = options.quality, None
        if options.format == "auto":
            choice = choose_format(picture, options.target_score, options.quality,
                                   lambda tiles, f, q: _encode(tiles, f, q, None, options.effort))
            fmt, quality, score = choice.format, choice.quality, choice.score
        elif options.target_score is not None:
            found = search_quality(picture, options.target_score, lambda tiles, q: _encode(
                tiles, fmt, q, None, options.effort))
            quality, score = found.quality, found.score
        elif options.measure_quality:
            score = round(tile_score(picture, quality, lambda tiles, q: _encode(
                tiles, fmt, q, None, options.effort)), 2)
        data = _encode(picture, fmt, quality, icc, options.effort)

    # Re-encoding a small, already well-compressed file can grow it; in its own format and
    # size the original is then the better answer, with its metadata taken out.
    kept = False
    if fmt == source_format and target == upright:
        original = _without_metadata(source, fmt, None if drop_srgb else profile,
                                     orientation, has_metadata)
        if original is not None and len(original) <= len(data):
            data, kept = original, True
    return TransformResult(
        data=data,
        format=fmt,
        extension=_EXTENSIONS[fmt],
        width=target[0],
        height=target[1],
        source_format=source_format,
        source_width=upright[0],
        source_height=upright[1],
        kept_source=kept,
        quality_used=None if kept else quality,
        encoder=None if kept else _ENCODERS.get(fmt) or encoder_name(options.effort),
        effort=options.effort,
        score=None if kept else score,
    )


@contextmanager
def _decoder_errors(source: bytes, source_format: str, max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile or damaged input into a DecodeError."""
    try:
        # Pillow's own bomb check only warns below twice its global limit; here it refuses.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow checks its own limit inside Image.open, before ours; the lower one was hit.
        raise _too_large(min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)) from exc
    except UnidentifiedImageError as exc:
        # Pillow hides why a file with a valid signature failed; the signature still tells
        # the user it is a damaged image rather than, say, an HTML error page.
        name = _sniff(source)
        raise DecodeError(f"corrupt {name} data" if name else "not an image") from exc
    except _DECODER_ERRORS as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise DecodeError("truncated image data") from exc
        raise DecodeError(f"corrupt {source_format.upper() or 'image'} data") from exc


def _too_large(max_pixels: int) -> DecodeError:
    return DecodeError(f"image exceeds {max_pixels / 1_000_000:g} megapixels")


def _sniff(source: bytes) -> str | None:
    if source[:4] == b"RIFF" and source[8:12] == b"WEBP":
        return "WEBP"
    if source[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    return next((name for magic, name in _SIGNATURES if source.startswith(magic)), None)


def _fit(size: tuple[int, int], max_width: int | None, max_height: int | None) -> tuple[int, int]:
    """The largest size inside the box with the same aspect ratio, never above ``size``."""
    width, height = size
    scale = min(1.0, (max_width or width) / width, (max_height or height) / height)
    if scale == 1.0:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_output_mode(im: Image.Image, fmt: EncodedFormat, profile: bytes | None) -> Image.Image:
    """RGB, or L for a greyscale JPEG: one channel, a few per cent smaller than RGB."""
    if im.mode == "CMYK":
        return _cmyk_to_rgb(im, profile)
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba)
        return flat
    if im.mode.startswith("I"):
        # 16-bit greyscale: a plain convert would clip everything above 255 to white.
        im = im.convert("I").point(lambda value: value / 256).convert("L")
    if im.mode == "L" and fmt == "jpeg":
        return im
    return im if im.mode == "RGB" else im.convert("RGB")


def _without_metadata(source: bytes, fmt: EncodedFormat, profile: bytes | None,
                      orientation: object, has_metadata: bool) -> bytes | None:
    """The source as it may be served: EXIF, GPS and XMP out, a refused profile out too.

    None when that cannot be done without re-encoding: the output is then the encoded one.
    """
    stripped = strip_metadata(source, fmt, keep_icc=profile is not None,
                              orientation=orientation if isinstance(orientation, int) else None)
    if stripped is None and fmt == "avif" and not has_metadata:
        return source  # AVIF's container is not rewritten; one with nothing to drop needs none
    return stripped


def _usable_profile(icc: bytes | None) -> bytes | None:
    """The source's colour profile, or None when it is too large or lcms cannot read it.

    Without one the pixels are taken as sRGB, as for a source that carries none.
    """
    if not icc or len(icc) > MAX_ICC_BYTES:
        return None
    try:
        ImageCms.ImageCmsProfile(BytesIO(icc))
    except (ImageCms.PyCMSError, OSError):
        return None
    return icc


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        try:
            converted = ImageCms.profileToProfile(
                im, ImageCms.ImageCmsProfile(BytesIO(icc)), _SRGB, outputMode="RGB"
            )
        except (ImageCms.PyCMSError, OSError):
            converted = None  # an unusable profile is no reason to refuse the picture
        if converted is not None:
            return converted
    return im.convert("RGB")


def _profile_fits(icc: bytes, mode: str) -> bool:
    """Whether the profile's colour space (ICC header bytes 16-20) describes ``mode`` pixels."""
    return icc[16:20] == (b"GRAY" if mode == "L" else b"RGB ")


def _encode(im: Image.Image, fmt: EncodedFormat, quality: int, icc: bytes | None,
            effort: Effort) -> bytes:
    # Encoders copy comments, XMP and the source's profile from ``info``; metadata is stripped.
    im.info = {}
    if fmt == "jpeg":
        return encode_jpeg(im, quality, icc, effort)
    if im.mode == "L":
        # Greyscale stays one channel only in JPEG (format=auto keeps it for JPEG's sake).
        im = im.convert("RGB")
        if icc and not _profile_fits(icc, "RGB"):
            icc = None
    params: dict[str, Any] = {"quality": quality}
    if icc:
        params["icc_profile"] = icc
    if fmt == "webp":
        # Pillow's default, 0, is a quarter larger on the corpus; 6 takes up to twice as long
        # as 4 for 1-8% less.
        params["method"] = 4
    out = BytesIO()
    im.save(out, format=fmt.upper(), **params)
    return out.getvalue()
