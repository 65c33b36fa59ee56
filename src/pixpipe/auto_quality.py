"""quality=auto: the lowest quality whose output reaches a SSIMULACRA2 target, found on tiles."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from pixpipe.quality_score import LARGE_PICTURE, ScoreReference, sample_tiles

# At balanced q50 the tile score reads 2.7 points above the reference package's score of the
# central 1024×1024 crop on the product photos (2.5 above the whole picture's; mean |error|
# about that 1.2), 0.9 (median) on the pictures under a megapixel in photos/. docs/codec.md.
TILE_SCORE_BIAS = 2.6
SMALL_PICTURE_BIAS = 0.9
# Each probe encodes, decodes and scores the 256×256 tiles: about a third of a 4 MP encode at
# balanced effort, so four keep the search within three times the fixed-quality transform.
MAX_PROBES = 4
LOWEST, HIGHEST = 10, 95
# A probe passing by less than this is taken as the lowest that passes: one quality step
# lower costs 0.5-0.8 points around the middle of the range.
_CLOSE_ENOUGH = 0.25
# The median photo's tile score (before the bias) per quality at balanced effort, over
# product-photos/ and photos/ (docs/codec.md). The first probe goes where the median photo
# meets the target; after one probe, where the typical curve shifted through it does.
_TYPICAL = ((10, -7.0), (20, 32.7), (30, 48.9), (40, 59.8), (50, 64.4), (60, 69.6),
            (70, 74.3), (80, 79.8), (90, 87.5), (95, 91.8))


@dataclass(frozen=True)
class AutoQuality:
    quality: int
    # The tile score of the chosen quality, on the reference package's scale; None when no
    # probed quality reached the target and the highest is used unprobed.
    score: float | None


def search_quality(picture: Image.Image, target: float,
                   encode: Callable[[Image.Image, int], bytes]) -> AutoQuality:
    """The lowest quality in LOWEST..HIGHEST whose ``encode`` of ``picture`` scores ``target``.

    Bounded: at most MAX_PROBES encodes of the sampled tiles. The first probe and the step
    after it follow the typical photo's curve; later ones interpolate between the nearest
    probes that pass and fail (the score rises with quality).
    """
    tiles = sample_tiles(picture)
    reference = ScoreReference(tiles)
    bias = _bias(picture)
    scores: dict[int, float] = {}

    def probe(quality: int) -> float:
        decoded = Image.open(BytesIO(encode(tiles, quality)))
        decoded.load()
        scores[quality] = reference.score(decoded) - bias
        return scores[quality]

    failing, passing = LOWEST - 1, HIGHEST + 1  # bounds known to fail and to pass
    quality = _typical_quality(target + bias)
    # Under a megapixel the encode is cheap: one probe fewer keeps the search near 3×, unless
    # nothing has passed yet (the answer would then be HIGHEST).
    budget = MAX_PROBES if picture.width * picture.height >= LARGE_PICTURE else MAX_PROBES - 1
    while len(scores) < budget or (passing > HIGHEST and len(scores) < MAX_PROBES):
        score = probe(quality)
        if score >= target:
            passing = quality
        else:
            failing = quality
        if passing - failing <= 1 or target <= score < target + _CLOSE_ENOUGH:
            break
        quality = _next_guess(scores, failing, passing, target, bias)
    if passing > HIGHEST:
        return AutoQuality(HIGHEST, scores.get(HIGHEST))
    return AutoQuality(passing, round(scores[passing], 2))


def tile_score(picture: Image.Image, quality: int,
                encode: Callable[[Image.Image, int], bytes]) -> float:
    """The score of ``encode`` at ``quality``, on the tiles and the scale search_quality uses."""
    tiles = sample_tiles(picture)
    decoded = Image.open(BytesIO(encode(tiles, quality)))
    decoded.load()
    return ScoreReference(tiles).score(decoded) - _bias(picture)


def _bias(picture: Image.Image) -> float:
    large = picture.width * picture.height >= LARGE_PICTURE
    return TILE_SCORE_BIAS if large else SMALL_PICTURE_BIAS


def _typical_quality(score: float) -> int:
    """The quality at which the median photo reaches ``score``, interpolated."""
    for (q0, s0), (q1, s1) in itertools.pairwise(_TYPICAL):
        if score <= s1:
            return round(q0 + (q1 - q0) * max(score - s0, 0.0) / (s1 - s0))
    return HIGHEST


def _typical_score(quality: int) -> float:
    for (q0, s0), (q1, s1) in itertools.pairwise(_TYPICAL):
        if quality <= q1:
            return s0 + (s1 - s0) * (max(quality, q0) - q0) / (q1 - q0)
    return _TYPICAL[-1][1]


def _next_guess(scores: dict[int, float], failing: int, passing: int, target: float,
                bias: float) -> int:
    """Where the picture's curve should cross the target, strictly between the bounds.

    Between two probes, on the straight line through them; beyond the only probe, on the
    typical curve shifted through it.
    """
    if failing in scores and passing in scores:
        low, high = scores[failing], scores[passing]
        fraction = (target - low) / (high - low) if high > low else 0.5
        guess = failing + round(fraction * (passing - failing))
    else:
        nearest = failing if failing in scores else passing
        # _TYPICAL is before the bias: the picture's curve runs ``shift`` above it.
        shift = scores[nearest] + bias - _typical_score(nearest)
        guess = _typical_quality(target + bias - shift)
    return min(max(guess, failing + 1), passing - 1, HIGHEST)
