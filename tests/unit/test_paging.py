"""Page sizes and page tokens (pure)."""

from __future__ import annotations

import base64

import pytest

from pixpipe.domain import ImageCursor, ImageState
from pixpipe.paging import (
    MAX_PAGE_SIZE,
    InvalidPageToken,
    decode_page_token,
    encode_page_token,
    page_size,
)

REQUEST = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"


def test_page_size_defaults_and_caps_at_the_maximum() -> None:
    assert page_size(0) == MAX_PAGE_SIZE
    assert page_size(25) == 25
    assert page_size(10**6) == MAX_PAGE_SIZE


@pytest.mark.parametrize("state", [None, ImageState.FAILED])
def test_a_token_round_trips_for_its_own_request_and_filter(state: ImageState | None) -> None:
    cursor = ImageCursor(serial_number=4_294_967_295, position=99)
    token = encode_page_token(REQUEST, state, cursor)
    assert "=" not in token and "/" not in token and "+" not in token  # URL-safe as it is
    assert decode_page_token(token, request_id=REQUEST, state=state) == cursor


def test_a_token_is_refused_for_another_filter_or_request() -> None:
    token = encode_page_token(REQUEST, ImageState.FAILED, ImageCursor(3, 0))
    with pytest.raises(InvalidPageToken, match="another request or status filter"):
        decode_page_token(token, request_id=REQUEST, state=None)
    with pytest.raises(InvalidPageToken, match="another request or status filter"):
        decode_page_token(token, request_id=REQUEST.replace("6", "7"),
                          state=ImageState.FAILED)


@pytest.mark.parametrize("token", [
    "not base64 at all!", "e30", base64.urlsafe_b64encode(b'["x","",1]').decode(),
    base64.urlsafe_b64encode(f'["{REQUEST}","",-1,0]'.encode()).decode(),
    base64.urlsafe_b64encode(f'["{REQUEST}","","1",0]'.encode()).decode(),
    "\x00\xff",
])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken, match="not one this server issued"):
        decode_page_token(token, request_id=REQUEST, state=None)
