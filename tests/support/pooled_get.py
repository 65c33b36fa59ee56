"""GET through a KeepAlivePool, reading the whole body (tests of the pool and its backend)."""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any

import httpcore

from pixpipe.connection_pool import KeepAlivePool


@dataclass(frozen=True)
class PooledResponse:
    status: int
    body: bytes
    stream: Any  # the network stream it came over: the same object means a reused connection


async def get(pool: KeepAlivePool, url: str, *, read_body: bool = True) -> PooledResponse:
    response = await pool.handle_async_request(httpcore.Request(
        "GET", url, headers=[(b"Host", httpcore.URL(url).host)]))
    chunks = []
    try:
        if read_body:
            assert isinstance(response.stream, AsyncIterable)
            chunks = [chunk async for chunk in response.stream]
    finally:
        await response.aclose()
    return PooledResponse(status=response.status, body=b"".join(chunks),
                          stream=response.extensions["network_stream"])
