"""The keys of content-addressed reuse: what makes two encodes the same."""

from __future__ import annotations

import dataclasses

from pixpipe.codec import TransformOptions
from pixpipe_services.worker.reuse import content_key, encoder_version, lookup_key, options_key


def test_every_option_the_tenant_and_the_source_are_part_of_the_key() -> None:
    base = TransformOptions()
    key = options_key(base)
    assert options_key(TransformOptions()) == key
    for change in ({"quality": 51}, {"max_width": 800}, {"max_height": 800},
                   {"format": "webp"}, {"effort": "max"}, {"target_score": 70.0},
                   {"max_pixels": 1_000_000}):
        assert options_key(dataclasses.replace(base, **change)) != key, change
    assert options_key(base, tenant="key-2") != key
    source = b"\xff\xd8photo"
    assert content_key(source, key) == content_key(bytes(source), key)
    assert content_key(source + b"\x00", key) != content_key(source, key)
    assert content_key(source, options_key(base, tenant="key-2")) != content_key(source, key)
    assert lookup_key("https://a/x.jpg", key) != lookup_key("https://a/y.jpg", key)


def test_the_encoder_version_names_the_libraries_that_encode() -> None:
    version = encoder_version()
    for library in ("codec", "pillow", "libjpeg-turbo", "webp", "avif", "libvips"):
        assert f"{library} " in version
