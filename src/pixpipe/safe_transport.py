"""An httpx transport whose connections may only reach addresses the network policy allows."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable

import httpcore
import httpx

from pixpipe.net_policy import IPAddress, is_public_address, resolve_allowed_addresses


def guarded_transport(*, allow_private: bool,
                      is_allowed: Callable[[IPAddress], bool] = is_public_address,
                      ssl_context: ssl.SSLContext | None = None,
                      ) -> httpx.AsyncBaseTransport:
    """httpx's own transport and keep-alive pool, connecting through ``GuardedBackend``.

    Used for every user-supplied URL: image sources and webhook receivers. ``ssl_context``
    defaults to the public roots, ignoring ``SSL_CERT_FILE`` and the like.
    """
    context = ssl_context or httpx.create_ssl_context(trust_env=False)
    transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False)
    # httpx takes no network backend yet (encode/httpx#3749 would add one), so its pool is
    # swapped for an identical one that connects through the guard; httpx still converts
    # requests, responses and httpcore's exceptions.
    limits = httpx.Limits()
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(allow_private=allow_private, is_allowed=is_allowed),
    )
    return transport


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks the address at connect time, then connects to that very address.

    Checking here rather than before the request defeats DNS rebinding: the address vetted is
    the one connected to. TLS still verifies the original host name, because httpcore passes
    it to ``start_tls`` separately. A refused address raises ``AddressNotAllowed``, a name
    that does not resolve ``socket.gaierror``; both pass through httpx unchanged.
    """

    def __init__(self, *, allow_private: bool,
                 is_allowed: Callable[[IPAddress], bool] = is_public_address) -> None:
        self._inner = httpcore.AnyIOBackend()
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
                    host, port, allow_private=self._allow_private, is_allowed=self._is_allowed)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out resolving {host}") from None
        last_error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address,
                                                     socket_options)
            except httpcore.ConnectError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
