"""JPEG encoders per effort: libjpeg-turbo through Pillow, mozjpeg through libvips."""

from __future__ import annotations

import os
from io import BytesIO
from types import ModuleType
from typing import Any

from PIL import Image

from pixpipe.domain import Effort

EFFORTS: tuple[Effort, ...] = ("fast", "balanced", "max")

LIBJPEG_TURBO = "libjpeg-turbo"
MOZJPEG = "mozjpeg"

# The table of Klein, Silverstein and Carney (1992), mozjpeg's quant_table 5, for quality
# 50 (scale 100 %) in natural order, luma and chroma alike. libjpeg scales it by quality and
# only then clips to 255, as mozjpeg does: the last entries stay above 255 here so that
# qualities above 50 keep mozjpeg's coarse highest frequencies.
_KSC_TABLE = (
    10, 12, 14, 19, 26, 38, 57, 86,
    12, 18, 21, 28, 35, 41, 54, 76,
    14, 21, 25, 32, 44, 63, 92, 136,
    19, 28, 32, 41, 54, 75, 107, 157,
    26, 35, 44, 54, 70, 95, 132, 190,
    38, 41, 63, 75, 95, 125, 170, 239,
    57, 54, 92, 107, 132, 170, 227, 312,
    86, 76, 136, 157, 190, 239, 312, 419,
)
# Balanced uses it 1.25 times coarser (libjpeg's scale for quality 40), so that quality 50
# looks as it did with mozjpeg's default table (quant_table 3): the same median score on the
# product photos for 7.5 % fewer bytes (docs/codec.md).
_BALANCED_TABLE = [(value * 5 + 2) // 4 for value in _KSC_TABLE]
_BALANCED_TABLES = {"L": [_BALANCED_TABLE], "RGB": [_BALANCED_TABLE, _BALANCED_TABLE]}

_vips: ModuleType | None = None


def encoder_name(effort: Effort) -> str:
    return MOZJPEG if effort == "max" else LIBJPEG_TURBO


def encode_jpeg(im: Image.Image, quality: int, icc: bytes | None, effort: Effort) -> bytes:
    """``im`` is RGB or L with its metadata already stripped."""
    if effort == "max":
        return _encode_mozjpeg(im, quality, icc)
    params: dict[str, Any] = {"quality": quality, "optimize": True}
    if effort == "balanced":
        params.update(qtables=_BALANCED_TABLES[im.mode], progressive=True)
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
    # quant_table 2, tuned by mozjpeg for MS-SSIM, rather than its default 3: with trellis it
    # reaches a given score with 8 % fewer bytes on the product photos, 2 % on photos/.
    data: bytes = image.jpegsave_buffer(
        Q=quality, optimize_coding=True, interlace=True, trellis_quant=True,
        optimize_scans=True, quant_table=2, keep=keep)
    return data
