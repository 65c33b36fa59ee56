"""A small keep-alive pool of httpcore HTTP/1.1 connections, for the safe transport.

httpcore's ``AsyncConnectionPool`` re-examines every connection it holds each time a request
starts or a response closes: it counts the idle connections once per idle connection
(quadratic in their number), asks each idle one whether the server closed it (a ``select``
system call each), and queues requests through lock and event objects that each yield to the
event loop. With a worker's eight downloads from the same host that bookkeeping cost more
CPU than reading the 340 KB bodies. This pool keeps idle connections per origin, most recent
first, and checks only the one it is about to reuse. It opens connections itself (TCP through
the given network backend, then TLS with ALPN "http/1.1") and speaks HTTP/1.1 over them with
httpcore's ``AsyncHTTP11Connection``, reading 256 KB at a time rather than 64 KB: a body is
read whole anyway, and each read costs a pass through h11 and httpcore.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator

import httpcore

Origin = tuple[bytes, bytes, int]
Connection = httpcore.AsyncHTTP11Connection


class _BulkReadingConnection(httpcore.AsyncHTTP11Connection):
    READ_NUM_BYTES = 256 * 1024


class KeepAlivePool:
    """Sends each request on an idle connection to its origin, or on a new one.

    Busy connections are not limited here: the callers bound how many requests run at once
    (a worker's concurrency, the notifier's delivery limit). At most ``max_idle`` idle
    connections are kept, each for at most ``keepalive_expiry`` seconds.
    """

    def __init__(self, network_backend: httpcore.AsyncNetworkBackend, *,
                 ssl_context: ssl.SSLContext, max_idle: int = 20,
                 keepalive_expiry: float = 5.0) -> None:
        self._backend = network_backend
        self._ssl_context = ssl_context
        self._ssl_context.set_alpn_protocols(["http/1.1"])
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: list[tuple[Origin, Connection]] = []  # oldest first

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        target = request.url.origin
        origin: Origin = (target.scheme, target.host, target.port)
        connection = await self._reusable(origin)
        if connection is None:
            connection = await self._connect(target, request)
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await _close_quietly(connection)
            raise
        return httpcore.Response(
            status=response.status, headers=response.headers,
            content=_ReturningStream(self, origin, connection, response),
            extensions=response.extensions)

    async def _connect(self, origin: httpcore.Origin, request: httpcore.Request) -> Connection:
        timeout = request.extensions.get("timeout", {}).get("connect")
        host = origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, origin.port, timeout=timeout)
        if origin.scheme == b"https":
            try:
                stream = await stream.start_tls(self._ssl_context, server_hostname=host,
                                                timeout=timeout)
            except BaseException:
                await stream.aclose()
                raise
        return _BulkReadingConnection(origin=origin, stream=stream,
                                      keepalive_expiry=self._keepalive_expiry)

    async def _reusable(self, origin: Origin) -> Connection | None:
        while (connection := self._take_idle(origin)) is not None:
            if connection.is_available() and not connection.has_expired():
                return connection
            # Expired, or the server closed it (it is readable while idle).
            await _close_quietly(connection)
        return None

    def _take_idle(self, origin: Origin) -> Connection | None:
        """The most recently used idle connection to ``origin``, out of the pool."""
        for index in range(len(self._idle) - 1, -1, -1):
            if self._idle[index][0] == origin:
                return self._idle.pop(index)[1]
        return None

    async def _release(self, origin: Origin, connection: Connection) -> None:
        """A response was closed: keep its connection if it can serve another request."""
        if not connection.is_idle() or connection.has_expired():
            await _close_quietly(connection)
            return
        self._idle.append((origin, connection))
        while len(self._idle) > self._max_idle:
            _, oldest = self._idle.pop(0)
            await _close_quietly(oldest)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, connection in idle:
            await _close_quietly(connection)


async def _close_quietly(connection: Connection) -> None:
    with contextlib.suppress(Exception):
        await connection.aclose()


class _ReturningStream:
    """The response body; closing it hands the connection back to the pool."""

    def __init__(self, pool: KeepAlivePool, origin: Origin,
                 connection: Connection, response: httpcore.Response) -> None:
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._response = response
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, AsyncIterable)
        async for chunk in stream:
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._response.aclose()
        except BaseException:
            await _close_quietly(self._connection)
            raise
        await self._pool._release(self._origin, self._connection)
