"""format=auto: the smallest of JPEG, WebP and AVIF at one SSIMULACRA2 score, judged on tiles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from PIL import Image, features

from pixpipe.auto_quality import search_quality, tile_score
from pixpipe.domain import EncodedFormat
from pixpipe.quality_score import sample_tiles

# JPEG first: it is the answer when nothing else reaches the score.
CANDIDATES: tuple[EncodedFormat, ...] = (
    ("jpeg", "webp", "avif") if features.check("avif") else ("jpeg", "webp"))

Encode = Callable[[Image.Image, EncodedFormat, int], bytes]


@dataclass(frozen=True)
class FormatChoice:
    format: EncodedFormat
    quality: int
    # The tile score of the choice on the reference package's scale (None: JPEG at its
    # highest quality, unprobed, because nothing reached the target).
    score: float | None


def choose_format(picture: Image.Image, target: float | None, jpeg_quality: int,
                  encode: Encode) -> FormatChoice:
    """The format, and its lowest quality, whose output reaching the score is smallest.

    ``target`` None: the score JPEG reaches at ``jpeg_quality`` is the one to match, so the
    answer looks as good as the JPEG that was asked for. Each format's quality is searched on
    the same tile mosaic quality=auto uses, and the mosaics' sizes at those qualities decide:
    only the winner is encoded whole, by the caller (AVIF costs ~0.5 s of CPU per 4 MP).
    """
    found: list[FormatChoice] = []
    if target is None:
        target = round(tile_score(picture, jpeg_quality, partial(_as, encode, "jpeg")), 2)
        found.append(FormatChoice("jpeg", jpeg_quality, target))
    for fmt in CANDIDATES[len(found):]:
        auto = search_quality(picture, target, partial(_as, encode, fmt))
        if fmt == "jpeg" or (auto.score is not None and auto.score >= target):
            found.append(FormatChoice(fmt, auto.quality, auto.score))
    tiles = sample_tiles(picture)
    return min(found, key=lambda choice: len(encode(tiles, choice.format, choice.quality)))


def _as(encode: Encode, fmt: EncodedFormat, tiles: Image.Image, quality: int) -> bytes:
    return encode(tiles, fmt, quality)
