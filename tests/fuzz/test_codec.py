"""Whatever bytes a download brings, the codec makes an image of them or raises DecodeError."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from pixpipe.codec import TransformOptions, transform_image
from pixpipe.errors import DecodeError
from tests.fuzz.budget import fuzz_budget
from tests.support.paths import corpus_root

# Pillow warns of each corrupt EXIF block it skips; skipping them is what we want.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

# Every image of the corpus up to 1 MB: the edge cases whole, the photos for their headers
# and entropy-coded data (a small box keeps a JPEG's decode at 1/8 scale).
SEEDS = sorted(path.read_bytes() for path in corpus_root().glob("*/*")
               if path.suffix.lower() in {".jpg", ".png", ".gif", ".webp"}
               and path.stat().st_size <= 1_000_000)
SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*",
              b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x00\x1cftypavif", b"BM"]
# Values that break size and offset arithmetic when they land in a header field.
EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def mutated_seeds(draw: st.DrawFn) -> bytes:
    """A corpus image with a few bytes flipped, overwritten, inserted, removed or cut off,
    mostly in the first kilobytes where the headers and tables are."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.one_of(st.integers(0, min(len(data), 2048)), st.integers(0, len(data))))
        kind = draw(st.sampled_from(["flip", "extreme", "splice", "insert", "delete",
                                     "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "extreme":
            width = draw(st.sampled_from([1, 2, 4]))
            value = draw(st.sampled_from(EXTREMES)) & ((1 << (8 * width)) - 1)
            big_endian = draw(st.booleans())
            data[at:at + width] = value.to_bytes(width, "big" if big_endian else "little")
        elif kind == "splice":
            patch = draw(st.binary(min_size=1, max_size=64))
            data[at:at + len(patch)] = patch
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 512))]
        else:
            del data[at:]
    return bytes(data)


# Mostly mutated seeds: random bytes rarely get past the signature check.
sources = st.one_of(
    st.sampled_from(SEEDS),
    mutated_seeds(),
    mutated_seeds(),
    mutated_seeds(),
    st.binary(max_size=1024),
    st.builds(bytes.__add__, st.sampled_from(SIGNATURES), st.binary(max_size=1024)),
)
options = st.builds(
    TransformOptions,
    quality=st.integers(1, 95),
    max_width=st.integers(1, 160),
    max_height=st.one_of(st.none(), st.integers(1, 160)),
    format=st.sampled_from(["jpeg", "webp", "avif"]),
    max_pixels=st.sampled_from([50_000_000, 1_000_000, 10_000]),
    effort=st.sampled_from(["fast", "balanced", "max"]),
)


@fuzz_budget
@given(sources, options)
def test_any_bytes_make_an_image_or_a_decode_error(source: bytes,
                                                   option: TransformOptions) -> None:
    try:
        result = transform_image(source, option)
    except DecodeError as error:
        assert error.reason
        event(f"refused: {error.reason}")
        return
    event(f"made a {result.format}")
    assert option.max_width is not None
    assert 1 <= result.width <= option.max_width
    assert option.max_height is None or 1 <= result.height <= option.max_height
    if result.kept_source:
        assert result.data == source
    else:
        with Image.open(BytesIO(result.data)) as written:
            assert written.format is not None
            assert written.format.lower() == result.format == option.format
            assert written.size == (result.width, result.height)


def test_the_seeds_are_there() -> None:
    assert len(SEEDS) >= 10, f"corpus images missing under {corpus_root()}"
    assert all(isinstance(seed, bytes) for seed in SEEDS)
    assert Path(corpus_root()).is_dir()
