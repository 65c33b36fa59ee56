"""Network policy: which URLs and IP addresses pixpipe may fetch images from."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})

# NAT64 (RFC 6052) puts an IPv4 address in the low 32 bits; the well-known prefix is what
# public resolvers synthesise, so it is the one worth unwrapping.
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
# Python's is_private misses this range on 3.11; it is carrier-grade NAT, never a web host.
_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")


# Whitespace (exactly what str.isspace() accepts), C0 controls and DEL; checked per image.
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


class AddressNotAllowed(Exception):
    """A host resolved to an address the network policy refuses (private, loopback, …)."""


def check_url_syntax(url: str, *, max_length: int = 2048) -> None:
    """Raise ``ValueError`` with a readable reason unless ``url`` is a fetchable http(s) URL."""
    if len(url) > max_length:
        raise ValueError(f"URL is longer than {max_length} characters")
    if _WHITESPACE_OR_CONTROL.search(url):
        raise ValueError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed URL ({exc})") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise ValueError("scheme must be http or https")
    # Credentials in a URL would be sent to whoever the host turns out to be, and they end up
    # in logs and status pages.
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in URLs are not allowed")
    if not parts.hostname:
        raise ValueError("host is required")
    if port == 0:
        raise ValueError("port 0 is not allowed")


def is_public_address(ip: IPAddress) -> bool:
    """True when ``ip`` is a globally routable unicast address, safe to connect to."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
        if ip.teredo is not None or ip in _NAT64_LOCAL_USE or ip.is_site_local:
            return False
    elif ip in _SHARED_ADDRESS_SPACE:
        return False
    # is_global alone lets multicast through, and its tables vary between Python versions,
    # so every category is named.
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
    )


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


async def resolve_allowed_addresses(
    host: str,
    port: int,
    *,
    allow_private: bool,
    is_allowed: Callable[[IPAddress], bool] = is_public_address,
) -> list[str]:
    """Resolve ``host`` without blocking the loop; refuse it if any address is not allowed.

    Refusing on *any* bad address (rather than skipping it) keeps a host that mixes public and
    private records from being half-usable. ``is_allowed`` exists so tests can stand in for
    public hosts with loopback ones.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"no address found for {host}")
    if not allow_private:
        for address in addresses:
            if not is_allowed(ipaddress.ip_address(address)):
                raise AddressNotAllowed("source address not allowed")
    return addresses
