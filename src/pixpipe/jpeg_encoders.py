"""JPEG encoders per effort: libjpeg-turbo through Pillow, mozjpeg through libvips."""

from __future__ import annotations

import os
from io import BytesIO
from types import ModuleType
from typing import Any, Literal

from PIL import Image

Effort = Literal["fast", "balanced", "max"]
EFFORTS: tuple[Effort, ...] = ("fast", "balanced", "max")

LIBJPEG_TURBO = "libjpeg-turbo"
MOZJPEG = "mozjpeg"

# mozjpeg's default quantisation table (its index 3, from Klein, Silverstein and Carney,
# 1992), at quality 50 (scale 100 %), in natural order; libjpeg scales it by quality as it
# does its own Annex K table. On the product photos it takes 19 % off libjpeg-turbo's bytes
# at the same quality for the same CPU; docs/codec.md has the measurements.
_KSC_TABLE = (
    16, 16, 16, 18, 25, 37, 56, 85,
    16, 17, 20, 27, 34, 40, 53, 75,
    16, 20, 24, 31, 43, 62, 91, 135,
    18, 27, 31, 40, 53, 74, 106, 156,
    25, 34, 43, 53, 69, 94, 131, 189,
    37, 40, 62, 74, 94, 124, 169, 238,
    56, 53, 91, 106, 131, 169, 226, 255,
    85, 75, 135, 156, 189, 238, 255, 255,
)
_KSC_TABLES = {"L": [list(_KSC_TABLE)], "RGB": [list(_KSC_TABLE), list(_KSC_TABLE)]}

_vips: ModuleType | None = None


def encoder_name(effort: Effort) -> str:
    return MOZJPEG if effort == "max" else LIBJPEG_TURBO


def encode_jpeg(im: Image.Image, quality: int, icc: bytes | None, effort: Effort) -> bytes:
    """``im`` is RGB or L with its metadata already stripped."""
    if effort == "max":
        return _encode_mozjpeg(im, quality, icc)
    params: dict[str, Any] = {"quality": quality, "optimize": True}
    if effort == "balanced":
        params.update(qtables=_KSC_TABLES[im.mode], progressive=True)
    if icc:
        params["icc_profile"] = icc
    out = BytesIO()
    im.save(out, format="JPEG", **params)
    return out.getvalue()


def prepare_vips() -> ModuleType:
    """Load libvips once per process, single-threaded and without its operation cache.

    Codec processes already use one core each; libvips' own threads would only compete
    with them, and its cache would keep pixels of images long gone.
    """
    global _vips
    if _vips is None:
        os.environ.setdefault("VIPS_CONCURRENCY", "1")
        import pyvips

        pyvips.cache_set_max(0)
        pyvips.cache_set_max_mem(0)
        pyvips.concurrency_set(1)
        _vips = pyvips
    return _vips


def _encode_mozjpeg(im: Image.Image, quality: int, icc: bytes | None) -> bytes:
    vips = prepare_vips()
    image = vips.Image.new_from_memory(im.tobytes(), im.width, im.height, len(im.mode), "uchar")
    image = image.copy(interpretation="b-w" if im.mode == "L" else "srgb")
    keep = vips.enums.ForeignKeep.NONE
    if icc:
        image.set_type(vips.GValue.blob_type, "icc-profile-data", icc)
        keep = vips.enums.ForeignKeep.ICC
    data: bytes = image.jpegsave_buffer(
        Q=quality, optimize_coding=True, interlace=True, trellis_quant=True,
        optimize_scans=True, quant_table=3, keep=keep)
    return data
