"""The safe image downloader: size, time, redirect and network-address limits on httpx."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx

from pixpipe.errors import FetchError
from pixpipe.net_policy import (
    AddressNotAllowed,
    IPAddress,
    check_url_syntax,
    is_public_address,
)
from pixpipe.safe_transport import guarded_transport
from pixpipe.settings import FetchSettings

logger = logging.getLogger(__name__)

_ALLOWED_BINARY_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
_NON_IMAGE_TOP_LEVEL = frozenset({"text", "audio", "video", "font", "multipart", "message"})
_NON_IMAGE_APPLICATION = frozenset(
    {"json", "xml", "javascript", "ecmascript", "pdf", "xhtml+xml", "zip", "gzip"}
)


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded body; ``url`` is the final URL after redirects.

    ``not_modified``: a conditional fetch was answered 304 and ``content`` is empty.
    """

    url: str
    content: bytes
    content_type: str | None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False


class SafeFetcher:
    """Downloads images over one pooled, guarded httpx transport; every failure is a
    ``FetchError``.

    It sends plain GETs straight to the transport: no cookies (fetches for different requests
    must not carry state from one to the next), no authentication, no content decoding, and
    redirects followed here, each hop vetted before it is requested. httpx's client would cost
    more per download and need its cookie jar disabled.
    """

    def __init__(
        self,
        policy: FetchSettings,
        *,
        is_address_allowed: Callable[[IPAddress], bool] = is_public_address,
    ) -> None:
        self._policy = policy
        self._transport = guarded_transport(allow_private=policy.allow_private_networks,
                                            is_allowed=is_address_allowed)
        self._headers = httpx.Headers({
            "User-Agent": policy.user_agent,
            "Accept": "image/*, */*;q=0.5",
            # Compressed transfer would let a small body inflate past the size limit
            # before it is counted, and images gain nothing from it.
            "Accept-Encoding": "identity",
        })
        # The total limit is enforced around the whole download with asyncio.timeout; the
        # transport only bounds the connect phase so a dead host fails fast.
        self._timeouts = {"connect": policy.connect_timeout_seconds, "read": None,
                          "write": None, "pool": None}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def fetch(self, url: str, *,
                    conditional: Mapping[str, str] | None = None) -> FetchedImage:
        """Download ``url``; raise ``FetchError`` saying why and whether a retry may help.

        ``conditional`` headers (``If-None-Match``, ``If-Modified-Since``) make a 304 answer
        a success: a FetchedImage with ``not_modified`` set and no content.
        """
        try:
            async with asyncio.timeout(self._policy.timeout_seconds):
                return await self._follow_redirects(url, conditional)
        except FetchError:
            raise
        except Exception as exc:
            raise _fetch_error(exc, self._policy.timeout_seconds) from exc

    async def _follow_redirects(self, url: str,
                                conditional: Mapping[str, str] | None) -> FetchedImage:
        _check_url(url, redirect=False)
        target = httpx.URL(url)
        headers = self._headers
        if conditional:
            headers = self._headers.copy()
            headers.update(conditional)
        for _ in range(self._policy.max_redirects + 1):
            request = httpx.Request("GET", target, headers=headers,
                                    extensions={"timeout": self._timeouts})
            response = await self._transport.handle_async_request(request)
            try:
                location = _redirect_location(response)
                if location is None:
                    if conditional and response.status_code == 304:
                        await _discard_short_body(response)
                        return FetchedImage(url=str(target), content=b"", content_type=None,
                                            not_modified=True)
                    return await self._read_image(target, response)
                await _discard_short_body(response)
                target = _redirect_target(target, location)
            finally:
                await response.aclose()
        raise FetchError("too many redirects", transient=False)

    async def _read_image(self, url: httpx.URL, response: httpx.Response) -> FetchedImage:
        if not 200 <= response.status_code < 300:
            await _discard_short_body(response)
        _check_status(response.status_code)
        content_type = _media_type(response.headers.get("Content-Type"))
        if content_type is not None and not _may_be_image(content_type):
            raise FetchError(f"not an image (content type {content_type})", transient=False)
        limit = self._policy.max_image_bytes
        too_large = FetchError(f"image larger than {_format_size(limit)}", transient=False)
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > limit:
                raise too_large
            chunks.append(chunk)
        return FetchedImage(url=str(url), content=b"".join(chunks),
                            content_type=content_type, etag=response.headers.get("ETag"),
                            last_modified=response.headers.get("Last-Modified"))


_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# An error page or redirect body up to this size is read and dropped, so that its keep-alive
# connection serves the next download (a catalogue's 404s otherwise cost a new connection
# each: ~12% of a worker's CPU); a larger one is not worth reading.
_DISCARDED_BODY_BYTES = 64 * 1024


async def _discard_short_body(response: httpx.Response) -> None:
    declared = response.headers.get("Content-Length", "")
    if not declared.isdigit() or int(declared) > _DISCARDED_BODY_BYTES:
        return
    async for _chunk in response.aiter_raw():
        pass


def _redirect_location(response: httpx.Response) -> str | None:
    if response.status_code not in _REDIRECT_STATUSES:
        return None
    location: str | None = response.headers.get("Location")
    return location


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    """Where a redirect points, vetted before it is requested."""
    try:
        target = current.join(location)
    except httpx.InvalidURL:
        raise FetchError("invalid redirect URL", transient=False) from None
    if target.scheme not in ("http", "https"):
        raise FetchError("redirect to a non-HTTP URL not allowed", transient=False)
    _check_url(str(target), redirect=True)
    return target


def _check_url(url: str, *, redirect: bool) -> None:
    try:
        check_url_syntax(url)
    except ValueError as exc:
        prefix = "invalid redirect URL" if redirect else "invalid URL"
        raise FetchError(f"{prefix}: {exc}", transient=False) from None


def _check_status(status: int) -> None:
    if 200 <= status < 300:
        return
    # Request timeouts, rate limits and server faults tend to pass; other answers do not.
    transient = status in (408, 429) or status >= 500
    raise FetchError(f"HTTP {status} from source", transient=transient)


def _media_type(header: str | None) -> str | None:
    if header is None:
        return None
    media = header.split(";", 1)[0].strip().lower()
    return media or None


def _may_be_image(media: str) -> bool:
    """Refuse only types that clearly are not images; the decoder judges the rest."""
    if media.startswith("image/") or media in _ALLOWED_BINARY_TYPES:
        return True
    top, _, sub = media.partition("/")
    if top in _NON_IMAGE_TOP_LEVEL:
        return False
    if top == "application":
        return sub not in _NON_IMAGE_APPLICATION and not sub.endswith(("+json", "+xml"))
    return True


def _format_size(size: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def _fetch_error(exc: Exception, timeout_seconds: float) -> FetchError:
    """The one translation of what a download raised into the reason a job records.

    Network errors arrive as httpx's types (httpx translates httpcore's), except the two the
    guarded backend raises itself: ``AddressNotAllowed`` and ``socket.gaierror``.
    """
    if isinstance(exc, TimeoutError):  # the total limit, not httpx's connect timeout
        return FetchError(f"timed out after {timeout_seconds:g} s", transient=True)
    if isinstance(exc, AddressNotAllowed):
        return FetchError("source address not allowed", transient=False)
    if isinstance(exc, socket.gaierror):
        return FetchError("could not resolve host", transient=True)
    if isinstance(exc, httpx.ConnectTimeout):
        return FetchError("timed out connecting to source", transient=True)
    if isinstance(exc, httpx.ConnectError):
        return FetchError("could not connect to source", transient=True)
    if isinstance(exc, httpx.RemoteProtocolError):
        return FetchError("incomplete or malformed response from source", transient=True)
    if isinstance(exc, httpx.TransportError | OSError):
        return FetchError("connection to source failed", transient=True)
    if isinstance(exc, httpx.InvalidURL):
        return FetchError("invalid URL", transient=False)
    logger.exception("unexpected error while fetching an image")
    return FetchError("unexpected error while fetching", transient=True)
