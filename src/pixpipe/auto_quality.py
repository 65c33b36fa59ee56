"""quality=auto: the lowest quality whose output reaches a SSIMULACRA2 target, found on tiles."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from pixpipe.quality_score import ScoreReference, sample_tiles

# On the product photos the tile score read 1.9 points above the reference package's score
# of the central 1024×1024 crop (mean over 24 encodes, mean |error| 2.0); docs/codec.md.
TILE_SCORE_BIAS = 1.9
# Each probe encodes, decodes and scores the 256×256 tiles: about a third of a 4 MP encode at
# balanced effort, so four keep the search within twice the fixed-quality transform.
MAX_PROBES = 4
LOWEST, HIGHEST = 10, 95
# Score points per quality step around the middle of the range, for the first steps.
_SLOPE = 0.65
_FIRST_GUESS = 60


@dataclass(frozen=True)
class AutoQuality:
    quality: int
    # The tile score of the chosen quality, on the reference package's scale; None when no
    # probed quality reached the target and the highest is used unprobed.
    score: float | None


def search_quality(picture: Image.Image, target: float,
                   encode: Callable[[Image.Image, int], bytes]) -> AutoQuality:
    """The lowest quality in LOWEST..HIGHEST whose ``encode`` of ``picture`` scores ``target``.

    Bounded: at most MAX_PROBES encodes of the sampled tiles, each step interpolating
    between the nearest probes that pass and fail (the score rises with quality).
    """
    tiles = sample_tiles(picture)
    reference = ScoreReference(tiles)
    scores: dict[int, float] = {}

    def probe(quality: int) -> float:
        decoded = Image.open(BytesIO(encode(tiles, quality)))
        decoded.load()
        scores[quality] = reference.score(decoded) - TILE_SCORE_BIAS
        return scores[quality]

    failing, passing = LOWEST - 1, HIGHEST + 1  # bounds known to fail and to pass
    quality = _FIRST_GUESS
    while len(scores) < MAX_PROBES:
        if probe(quality) >= target:
            passing = quality
        else:
            failing = quality
        if passing - failing <= 1:
            break
        quality = _next_guess(scores, failing, passing, target)
    if passing > HIGHEST:
        return AutoQuality(HIGHEST, scores.get(HIGHEST))
    return AutoQuality(passing, round(scores[passing], 2))


def tile_score(picture: Image.Image, quality: int,
                encode: Callable[[Image.Image, int], bytes]) -> float:
    """The score of ``encode`` at ``quality``, on the tiles and the scale search_quality uses."""
    tiles = sample_tiles(picture)
    decoded = Image.open(BytesIO(encode(tiles, quality)))
    decoded.load()
    return ScoreReference(tiles).score(decoded) - TILE_SCORE_BIAS


def _next_guess(scores: dict[int, float], failing: int, passing: int, target: float) -> int:
    if failing in scores and passing in scores:
        low, high = scores[failing], scores[passing]
        fraction = (target - low) / (high - low) if high > low else 0.5
        guess = failing + math.ceil(fraction * (passing - failing))
    elif failing in scores:
        guess = failing + math.ceil((target - scores[failing]) / _SLOPE)
    else:
        guess = passing - math.floor((scores[passing] - target) / _SLOPE)
    return min(max(guess, failing + 1), passing - 1, HIGHEST)
