"""Effort max leaves out colour profiles that restate sRGB, and keeps every other one."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.colour_profiles import restates_srgb

CORPUS = Path(__file__).parents[2].parent / "shared" / "corpus"


def embedded_profile(name: str) -> bytes:
    with Image.open(CORPUS / name) as image:
        profile = image.info["icc_profile"]
    assert isinstance(profile, bytes)
    return profile


@pytest.mark.parametrize(("name", "expected"), [
    ("photos/astronaut.png", True),  # "sRGB IEC61966-2.1", the 3 KB v2 profile
    ("product-photos/colorful-cups.jpg", True),  # a 7 KB sRGB of another maker
    ("photos/rocket.jpg", False),  # Adobe RGB (1998): wider primaries
])
def test_srgb_is_told_by_what_the_profile_does_not_by_its_name(name: str,
                                                               expected: bool) -> None:
    assert restates_srgb(embedded_profile(name)) is expected


def test_grey_and_unreadable_profiles_are_not_srgb() -> None:
    grey = bytearray(embedded_profile("photos/astronaut.png"))
    grey[16:20] = b"GRAY"
    assert not restates_srgb(bytes(grey))
    assert not restates_srgb(b"RGB profile? no" * 20)
    assert not restates_srgb(bytes(16) + b"RGB " + bytes(200))


def decoded(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("name", ["photos/hubble_deep_field.jpg", "photos/chelsea.png"])
def test_max_drops_an_srgb_profile_and_nothing_else_changes(name: str) -> None:
    source = (CORPUS / name).read_bytes()
    smallest = transform_image(source, TransformOptions(effort="max"))
    balanced = transform_image(source, TransformOptions(effort="balanced"))
    assert decoded(balanced.data).info["icc_profile"] == embedded_profile(name)
    assert "icc_profile" not in decoded(smallest.data).info
    # Shown through its profile or as untagged sRGB, the picture is the same.
    srgb = ImageCms.createProfile("sRGB")
    as_tagged = ImageCms.profileToProfile(
        decoded(smallest.data), ImageCms.ImageCmsProfile(BytesIO(embedded_profile(name))),
        srgb, outputMode="RGB")
    assert as_tagged is not None
    difference = (np.asarray(as_tagged, dtype=np.int16)
                  - np.asarray(decoded(smallest.data), dtype=np.int16))
    assert np.abs(difference).max() <= 1


def test_max_keeps_a_wide_gamut_profile() -> None:
    source = (CORPUS / "photos/rocket.jpg").read_bytes()
    result = transform_image(source, TransformOptions(effort="max"))
    assert decoded(result.data).info["icc_profile"] == embedded_profile("photos/rocket.jpg")
