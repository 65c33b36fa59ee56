"""A fast SSIMULACRA2 score: float32 arrays, a cached reference, sampled tiles.

The reference ``ssimulacra2`` package scores a 4 MP photo in ~10 s of CPU (float64, file
input). Here the planes are float32 and channel-first, the reference side (its XYB planes
and their blurs) is computed once per image, so a quality search pays only for the
candidate's side, and the final weighting is the package's own. ``sample_tiles`` picks
the regions scored; docs/codec.md says how the result tracks the full-image reference.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from ssimulacra2 import ssimulacra2 as reference

Array = NDArray[np.float32]

_SCALES = 6
_SIGMA = 1.5
_OPSIN = reference.kOpsinAbsorbanceMatrix.reshape(3, 3).astype(np.float32)
_BIAS = reference.kOpsinAbsorbanceBias.astype(np.float32)
_CBRT_BIAS = np.cbrt(_BIAS)
_C2 = np.float32(0.0009)
TILE = 128  # a multiple of 16: JPEG's 4:2:0 blocks never straddle two tiles
_SMALL_TILE = 64  # for pictures under LARGE_PICTURE pixels
LARGE_PICTURE = 1_000_000
_TILES_PER_SIDE = 2


def sample_tiles(im: Image.Image) -> Image.Image:
    """A mosaic of four 16-aligned tiles of ``im``, or ``im`` itself when it is small.

    JPEG codes each 16×16 block on its own, so a block-aligned tile encodes as it does in
    the whole picture: the mosaic's encodes and scores stand in for the picture's at a
    sixteenth of the cost of a 4 MP photo. Under a megapixel the tiles are 64 pixels, so
    that a search costs a small picture about what it costs a large one in proportion to
    its encode; only a picture not twice the mosaic's area is scored whole.
    """
    width, height = im.size
    tile = TILE if width * height >= LARGE_PICTURE else _SMALL_TILE
    side = tile * _TILES_PER_SIDE
    if width < side or height < side or width * height < 2 * side * side:
        return im
    mosaic = Image.new(im.mode, (side, side))
    for row in range(_TILES_PER_SIDE):
        for column in range(_TILES_PER_SIDE):
            # Tile centres at the quarter points of the picture, snapped to the block grid.
            left = ((width * (2 * column + 1)) // (2 * _TILES_PER_SIDE) - tile // 2) // 16 * 16
            top = ((height * (2 * row + 1)) // (2 * _TILES_PER_SIDE) - tile // 2) // 16 * 16
            mosaic.paste(im.crop((left, top, left + tile, top + tile)),
                         (column * tile, row * tile))
    return mosaic


def _srgb_to_linear(srgb: Array) -> Array:
    return np.where(srgb <= 0.04045, srgb / 12.92,
                    ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


# The 256 values 8-bit pixels can take: a lookup instead of a power per pixel.
_LINEAR = _srgb_to_linear(np.arange(256, dtype=np.float32) / np.float32(255.0))


def _linear(im: Image.Image) -> Array:
    """Channel-first (3, height, width) linear RGB."""
    pixels = np.ascontiguousarray(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
    linear: Array = _LINEAR[pixels]
    return linear


def _xyb(linear: Array) -> Array:
    """Channel-first (3, height, width) positive XYB planes of linear RGB planes."""
    mixed: Array = np.tensordot(_OPSIN, linear, axes=1)
    mixed += _BIAS[:, None, None]
    np.maximum(mixed, 0.0, out=mixed)
    np.cbrt(mixed, out=mixed)
    mixed -= _CBRT_BIAS[:, None, None]
    xyb = np.empty_like(mixed)
    np.subtract(mixed[0], mixed[1], out=xyb[0])
    xyb[0] *= 7.0  # 14 times half the difference
    xyb[0] += 0.42
    np.add(mixed[0], mixed[1], out=xyb[1])
    xyb[1] *= 0.5
    np.subtract(mixed[2], xyb[1], out=xyb[2])
    xyb[2] += 0.55
    xyb[1] += 0.01
    return xyb


def _blur(planes: Array) -> Array:
    blurred: Array = ndimage.gaussian_filter(planes, sigma=_SIGMA, truncate=3.33,
                                             mode="reflect", axes=(1, 2))
    return blurred


def _norms(error: Array) -> tuple[Array, Array]:
    """Per plane, the mean and the 4-norm of a non-negative error map."""
    squared = error * error
    return error.mean(axis=(1, 2)), (squared * squared).mean(axis=(1, 2)) ** 0.25


def _ssim(mu1: Array, mu2: Array, sigma11: Array, sigma22: Array,
          sigma12: Array) -> NDArray[np.float64]:
    # SSIMULACRA2's SSIM has no luminance term scaled by the means: 1 - (mu1 - mu2)^2.
    mu12 = mu1 * mu2
    numerator = (1.0 - (mu1 - mu2) ** 2) * (2.0 * (sigma12 - mu12) + _C2)
    denominator = (sigma11 - mu1 * mu1) + (sigma22 - mu2 * mu2) + _C2
    mean, norm4 = _norms(np.maximum(1.0 - numerator / denominator, 0.0))
    averages = np.empty(6)
    averages[0::2], averages[1::2] = mean, norm4
    return averages


def _edges(source: Array, mu1: Array, distorted: Array, mu2: Array) -> NDArray[np.float64]:
    # > 0: edges the source lacks (ringing, blocking); < 0: detail lost (blurring).
    ratio = (1.0 + np.abs(distorted - mu2)) / (1.0 + np.abs(source - mu1)) - 1.0
    averages = np.empty(12)
    averages[0::4], averages[1::4] = _norms(np.maximum(ratio, 0.0))
    averages[2::4], averages[3::4] = _norms(np.maximum(-ratio, 0.0))
    return averages


def _halve(linear: Array) -> Array:
    """Each 2×2 block's mean (an odd last row or column is dropped)."""
    height, width = linear.shape[1] // 2 * 2, linear.shape[2] // 2 * 2
    halved: Array = linear[:, 0:height:2, 0:width:2] + linear[:, 1:height:2, 0:width:2]
    halved += linear[:, 0:height:2, 1:width:2]
    halved += linear[:, 1:height:2, 1:width:2]
    halved *= 0.25
    return halved


class ScoreReference:
    """One decoded source, ready to score any number of candidates against."""

    def __init__(self, source: Image.Image) -> None:
        self.size = source.size
        self._scales: list[tuple[Array, Array, Array]] = []
        linear = _linear(source)
        for _ in range(_SCALES):
            if min(linear.shape[1:]) < 8:
                break
            xyb = _xyb(linear)
            self._scales.append((xyb, _blur(xyb), _blur(xyb * xyb)))
            linear = _halve(linear)

    def score(self, candidate: Image.Image) -> float:
        """SSIMULACRA2 of ``candidate`` (same size) against the source: 100 is identical."""
        if candidate.size != self.size:
            raise ValueError("the candidate's size differs from the source's")
        result = reference.Msssim()
        linear = _linear(candidate)
        for xyb, mu1, sigma11 in self._scales:
            distorted = _xyb(linear)
            mu2 = _blur(distorted)
            scale = reference.MsssimScale()
            scale.avg_ssim = _ssim(mu1, mu2, sigma11, _blur(distorted * distorted),
                                   _blur(xyb * distorted))
            scale.avg_edgediff = _edges(xyb, mu1, distorted, mu2)
            result.scales.append(scale)
            linear = _halve(linear)
        # The package weighs its terms by position, six scales per channel: a picture too
        # small for all six gets the missing coarsest ones as flawless. Their weights are
        # next to nothing (the sixth scale's sum to 0.002 of ~900).
        while len(result.scales) < _SCALES:
            result.scales.append(reference.MsssimScale())
        return float(result.score())
