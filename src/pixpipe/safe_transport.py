"""An httpx transport that checks every connection's address against the network policy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator

import httpcore
import httpx

from pixpipe.asyncio_network import AsyncioBackend
from pixpipe.connection_pool import KeepAlivePool
from pixpipe.net_policy import IPAddress, is_public_address, resolve_allowed_addresses


def guarded_transport(*, allow_private: bool,
                      is_allowed: Callable[[IPAddress], bool] = is_public_address,
                      ) -> httpx.AsyncBaseTransport:
    """A pooled transport whose connections may only reach allowed addresses.

    Used for every user-supplied URL: image sources and webhook receivers.
    """
    return _GuardedTransport(_GuardedBackend(allow_private=allow_private, is_allowed=is_allowed))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks the address at connect time, then connects to that very address.

    Checking here rather than before the request defeats DNS rebinding: the address vetted is
    the one connected to. TLS still verifies the original host name, because httpcore passes
    it to ``start_tls`` separately.
    """

    def __init__(self, *, allow_private: bool, is_allowed: Callable[[IPAddress], bool]) -> None:
        self._inner = AsyncioBackend()
        self._allow_private = allow_private
        self._is_allowed = is_allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_allowed_addresses(
                    host, port, allow_private=self._allow_private, is_allowed=self._is_allowed
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out resolving {host}") from None
        last_error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# Most specific first: httpx exposes the same hierarchy, and callers match on the httpx types.
_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _HTTPCORE_TO_HTTPX:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc)) from exc
        raise


class _GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over a keep-alive pool of httpcore connections that use
    ``_GuardedBackend``.

    httpx.AsyncHTTPTransport cannot take a network backend, hence this small equivalent.
    """

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._pool = KeepAlivePool(backend, ssl_context=httpx.create_ssl_context(trust_env=False),
                                   max_idle=20, keepalive_expiry=5.0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            core_response = await self._pool.handle_async_request(core_request)
        assert isinstance(core_response.stream, AsyncIterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()
