"""Network policy: which URLs pixpipe accepts and which addresses it may connect to."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})

# NAT64 (RFC 6052) puts an IPv4 address in the low 32 bits; the well-known prefix is what
# public resolvers synthesise, so it is the one worth unwrapping.
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
# Python's is_private misses this range on 3.11; it is carrier-grade NAT, never a web host.
_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")


_WHITESPACE = re.compile(r"\s")  # exactly what str.isspace() accepts
# A DNS label as RFC 1123 has it, plus "_" (used in real host names, and harmless here).
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_HOST_NAME = 253
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")

# URLs that certainly pass check_url_syntax (a unit test holds it to that), so a caller with
# many URLs, the CSV parser, can accept them without a closer look: http(s), a host name whose
# last label starts with a letter or a dotted-quad address, perhaps a port, then printable ASCII
# without spaces or commas.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LAST_LABEL = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
PLAIN_URL_PATTERN = (
    rf"https?://(?=[A-Za-z0-9.-]{{1,{_MAX_HOST_NAME}}}(?![A-Za-z0-9.-]))"
    rf"(?:{_OCTET}(?:\.{_OCTET}){{3}}|(?:{_LABEL}\.)*{_LAST_LABEL})"
    rf"(?::{_PORT})?(?:[/?#][!-+\--~]*)?"
)


class AddressNotAllowed(Exception):
    """A host resolved to an address the network policy refuses (private, loopback, …)."""


def check_url_syntax(url: str, *, max_length: int = 2048) -> None:
    """Raise ``ValueError`` with a readable reason unless ``url`` is a fetchable http(s) URL.

    The one rule for every URL a user hands pixpipe (image sources, webhook receivers, redirect
    targets): what passes it, httpx can send and the resolver can look up.
    """
    url_host(url, max_length=max_length)


def check_webhook_url(url: str, *, max_length: int = 2048, allow_private: bool) -> None:
    """``check_url_syntax``, and unless ``allow_private``, refuse a host that is written as a
    non-public address (or names this machine): no delivery to it could ever be allowed.

    Host names are left to the connect-time check, which sees the addresses they resolve to.
    """
    host = url_host(url, max_length=max_length)
    if allow_private:
        return
    name = host.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):  # this machine, says RFC 6761
        raise ValueError(f"host {host!r} is this machine; webhooks must go to a public address")
    address = literal_address(host)
    if address is not None and not is_public_address(address):
        raise ValueError(f"host {host!r} is the address {address}, which is private, loopback, "
                         "link-local or reserved; webhooks must go to a public address")


def url_host(url: str, *, max_length: int = 2048) -> str:
    """The host ``url`` will connect to, lower case and ASCII (IDNA-encoded, IPv6 without
    brackets), once ``url`` passes the rule; ``ValueError`` with a reason otherwise."""
    if len(url) > max_length:
        raise ValueError(f"URL is {len(url)} characters long, over the limit of {max_length}")
    if not url.isprintable() or _WHITESPACE.search(url):
        raise ValueError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed URL ({exc})") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise ValueError("scheme must be http or https" +
                         (f", not {parts.scheme!r}" if parts.scheme else ""))
    # Credentials in a URL would be sent to whoever the host turns out to be, and they end up
    # in logs and status pages.
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in URLs are not allowed")
    if not parts.hostname:
        raise ValueError("host is required")
    if port == 0:
        raise ValueError("port 0 is not allowed")
    return _checked_host(parts.hostname)


@functools.lru_cache(maxsize=4096)  # the URLs of one file share few hosts
def _checked_host(hostname: str) -> str:
    host = hostname if hostname.isascii() else _idna_host(hostname)
    if ":" in host:
        _check_ipv6(host)
    else:
        _check_host_name(host)
    return host


def _idna_host(host: str) -> str:
    """The host as httpx sends it (IDNA 2008, as httpx encodes it), so that a name only a
    looser mapping turns into an address (NFKC: "①②⑦.0.0.1") is refused here."""
    try:
        return httpx.URL(f"http://{host}/").raw_host.decode("ascii")
    except httpx.InvalidURL as exc:
        raise ValueError(f"host is not a valid domain name ({exc})") from None


def _check_ipv6(host: str) -> None:
    if "%" in host:
        raise ValueError("host must not name a network interface (an IPv6 zone)")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"host {host!r} is not a valid IPv6 address") from None


def _check_host_name(host: str) -> None:
    name = host.removesuffix(".")
    if len(name) > _MAX_HOST_NAME:
        raise ValueError(f"host name is longer than {_MAX_HOST_NAME} characters")
    labels = name.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"host {host!r} is not a valid host name (each dot-separated part "
                         "has 1 to 63 letters, digits or inner hyphens)")
    if _NUMBER.fullmatch(labels[-1]):
        try:
            _ipv4_from_numbers(labels)
        except ValueError:
            raise ValueError(f"host {host!r} is not a valid IPv4 address") from None


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` (as ``url_host`` returns it) is written as, or None for a name.

    Besides the dotted quad this reads every form the C resolver accepts (and the WHATWG URL
    standard): 2130706433, 0x7f.1, 0177.0.0.1 are all 127.0.0.1.
    """
    if ":" in host:
        return ipaddress.IPv6Address(host.split("%", 1)[0])
    labels = host.removesuffix(".").split(".")
    if not _NUMBER.fullmatch(labels[-1]):
        return None
    return _ipv4_from_numbers(labels)


def _ipv4_from_numbers(labels: list[str]) -> ipaddress.IPv4Address:
    """inet_aton's reading: one to four numbers, each decimal, octal (leading 0) or hex (0x);
    the last fills the bytes the others leave."""
    if not 1 <= len(labels) <= 4:
        raise ValueError("an IPv4 address has one to four parts")
    numbers: list[int] = []
    for label in labels:
        if label[:2].lower() == "0x":
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            numbers.append(int(label, 8))
        else:
            numbers.append(int(label, 10))
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        raise ValueError("a part of the IPv4 address is out of range")
    value = last
    for position, number in enumerate(leading):
        value += number << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


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
