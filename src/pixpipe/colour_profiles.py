"""Which embedded colour profiles say nothing a viewer does not already assume."""

from __future__ import annotations

from functools import lru_cache
from io import BytesIO

import numpy as np
from PIL import Image, ImageCms

# Every 17th level of each channel and every grey: enough to tell sRGB from any other
# primaries, white point or tone curve, and 2 ms of lcms per profile.
_LEVELS = np.arange(0, 256, 17, dtype=np.uint8)
_PROBE_PIXELS = np.concatenate([
    np.stack(np.meshgrid(_LEVELS, _LEVELS, _LEVELS, indexing="ij"), axis=-1).reshape(-1, 3),
    np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1),
])[None]
_PROBE = Image.fromarray(_PROBE_PIXELS, "RGB")
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@lru_cache(maxsize=64)
def restates_srgb(icc: bytes) -> bool:
    """Whether an RGB profile maps every colour to (within one level) the same sRGB colour.

    An image without a profile is shown as sRGB, so such a profile (the 3 KB "sRGB
    IEC61966-2.1" most cameras and editors embed, or any variant of it) can be left out
    without changing a pixel on any screen. A profile lcms cannot use is not sRGB.
    """
    if icc[16:20] != b"RGB ":
        return False
    try:
        converted = ImageCms.profileToProfile(
            _PROBE, ImageCms.ImageCmsProfile(BytesIO(icc)), _SRGB,
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError):
        return False
    assert converted is not None
    difference = np.asarray(converted, dtype=np.int16) - _PROBE_PIXELS
    return bool(np.abs(difference).max() <= 1)
