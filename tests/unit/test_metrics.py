"""Metric labels come from a fixed set, never from what a remote source sent (pure)."""

from __future__ import annotations

import pytest

from pixpipe.metrics import FAILURE_KINDS, failure_kind


@pytest.mark.parametrize(("reason", "kind"), [
    ("HTTP 404 from source", "http_4xx"),
    ("HTTP 503 from source", "http_5xx"),
    ("not an image (content type text/html; charset=<script>alert(1)</script>)", "not_an_image"),
    ("not an image", "not_an_image"),
    ("image larger than 50 MB", "too_large"),
    ("image exceeds 50 megapixels", "too_many_pixels"),
    ("timed out after 30 s", "timeout"),
    ("took longer than 60 s", "timeout"),
    ("needs more memory than 2 GiB", "too_much_memory"),
    ("source address not allowed", "address_not_allowed"),
    ("invalid URL: bad host 'x\\u202e'", "invalid_url"),
    ("corrupt PNG data", "corrupt"),
    ("truncated image data", "truncated"),
    ("image processor crashed", "crashed"),
    ("gave up after 5 attempts", "gave_up"),
    ("something nobody foresaw: " + "x" * 500, "other"),
])
def test_every_reason_maps_to_a_fixed_kind(reason: str, kind: str) -> None:
    assert failure_kind(reason) == kind
    assert kind in FAILURE_KINDS
