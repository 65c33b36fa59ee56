"""Pages of a request's images (AIP-158): the page query and its opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from pixpipe.domain import ImageCursor, ImageState

MAX_PAGE_SIZE = 1000


class InvalidPageToken(ValueError):
    """A page token that this server did not issue, or issued for another query."""


@dataclass(frozen=True)
class ImagePageQuery:
    size: int = MAX_PAGE_SIZE
    state: ImageState | None = None
    after: ImageCursor | None = None


FIRST_PAGE = ImagePageQuery()


def page_size(requested: int) -> int:
    """0 (unset) means the default; anything above the maximum is the maximum (AIP-158)."""
    return MAX_PAGE_SIZE if requested <= 0 else min(requested, MAX_PAGE_SIZE)


def encode_page_token(request_id: str, state: ImageState | None, cursor: ImageCursor) -> str:
    payload = [request_id, state.value if state else "", cursor.serial_number, cursor.position]
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, *, request_id: str, state: ImageState | None) -> ImageCursor:
    """The cursor in ``token``; raises InvalidPageToken unless it was issued for this very
    request and filter (a token must not silently page through another query)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        token_request, token_state, serial, position = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as error:
        raise InvalidPageToken("page_token is not one this server issued") from error
    if not (isinstance(serial, int) and isinstance(position, int)) or serial < 0 or position < 0:
        raise InvalidPageToken("page_token is not one this server issued")
    if token_request != request_id or token_state != (state.value if state else ""):
        raise InvalidPageToken("page_token was issued for another request or status filter")
    return ImageCursor(serial_number=serial, position=position)
