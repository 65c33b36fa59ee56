"""Profiles that only restate sRGB are left out at every effort; every other one is kept."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import ImageCms

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.colour_profiles import restates_srgb
from pixpipe.domain import Effort
from tests.support.images import decode, embedded_profile
from tests.support.paths import corpus_root

CORPUS = corpus_root()
EFFORTS: list[Effort] = ["fast", "balanced", "max"]


@pytest.mark.parametrize(("name", "expected"), [
    ("photos/astronaut.png", True),  # "sRGB IEC61966-2.1", the 3 KB v2 profile
    ("product-photos/colorful-cups.jpg", True),  # a 7 KB sRGB of another maker
    ("photos/rocket.jpg", False),  # Adobe RGB (1998): wider primaries
])
def test_srgb_is_told_by_what_the_profile_does_not_by_its_name(name: str,
                                                               expected: bool) -> None:
    assert restates_srgb(embedded_profile(CORPUS / name)) is expected


def test_grey_and_unreadable_profiles_are_not_srgb() -> None:
    grey = bytearray(embedded_profile(CORPUS / "photos/astronaut.png"))
    grey[16:20] = b"GRAY"
    assert not restates_srgb(bytes(grey))
    assert not restates_srgb(b"RGB profile? no" * 20)
    assert not restates_srgb(bytes(16) + b"RGB " + bytes(200))


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("name", ["photos/hubble_deep_field.jpg", "photos/chelsea.png"])
def test_an_srgb_profile_is_left_out_and_no_colour_changes(name: str, effort: Effort) -> None:
    profile = embedded_profile(CORPUS / name)
    result = transform_image((CORPUS / name).read_bytes(), TransformOptions(effort=effort))
    out = decode(result.data)
    assert "icc_profile" not in out.info
    # Shown through the profile it came with or as untagged sRGB, the picture is the same.
    as_tagged = ImageCms.profileToProfile(
        out, ImageCms.ImageCmsProfile(BytesIO(profile)), ImageCms.createProfile("sRGB"),
        outputMode="RGB")
    assert as_tagged is not None
    difference = (np.asarray(as_tagged, dtype=np.int16)
                  - np.asarray(out.convert("RGB"), dtype=np.int16))
    assert np.abs(difference).max() <= 1


@pytest.mark.parametrize("effort", EFFORTS)
def test_a_wide_gamut_profile_is_kept(effort: Effort) -> None:
    source = (CORPUS / "photos/rocket.jpg").read_bytes()
    result = transform_image(source, TransformOptions(effort=effort))
    assert decode(result.data).info["icc_profile"] == embedded_profile(
        CORPUS / "photos/rocket.jpg")

