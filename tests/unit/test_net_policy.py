"""Unit tests of the network policy: address classes, URL syntax, resolution."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from pixpipe.net_policy import (
    AddressNotAllowed,
    check_url_syntax,
    is_public_address,
    resolve_allowed_addresses,
)

NOT_PUBLIC = [
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",
    "0.1.2.3",
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.254",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.10",  # documentation
    "198.18.0.1",  # benchmarking
    "::1",
    "::",
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",  # deprecated site-local
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2002:c0a8:0101::1",  # 6to4 wrapping 192.168.1.1
    "2002:7f00:0001::1",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::10.0.0.1",  # NAT64 wrapping a private address
    "64:ff9b::127.0.0.1",
    "64:ff9b:1::8.8.8.8",  # NAT64 local-use prefix
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",
    "100.128.0.1",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:0808:0808::1",  # 6to4 wrapping 8.8.8.8
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is True


@pytest.mark.parametrize(
    "url",
    [
        "https://img.example/a.jpg",
        "http://img.example:8080/path/b.png?size=large#top",
        "HTTPS://IMG.EXAMPLE/UPPER.JPG",
        "http://127.0.0.1:8000/photos/rocket.jpg",  # syntax only; addresses are checked later
        "http://[2001:db8::1]/a.jpg",
        "https://xn--bcher-kva.example/a.jpg",
    ],
)
def test_valid_urls_pass(url: str) -> None:
    check_url_syntax(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://img.example/a.jpg", "scheme must be http or https"),
        ("file:///etc/passwd", "scheme must be http or https"),
        ("javascript:alert(1)", "scheme must be http or https"),
        ("gopher://img.example:70/", "scheme must be http or https"),
        ("img.example/a.jpg", "scheme must be http or https"),
        ("", "scheme must be http or https"),
        ("http:///a.jpg", "host is required"),
        ("https://", "host is required"),
        ("https://:443/a.jpg", "host is required"),
        ("https://user:secret@img.example/a.jpg", "credentials in URLs are not allowed"),
        ("https://user@img.example/a.jpg", "credentials in URLs are not allowed"),
        ("https://:secret@img.example/a.jpg", "credentials in URLs are not allowed"),
        ("http://img.example:99999/a.jpg", "malformed URL"),
        ("http://img.example:port/a.jpg", "malformed URL"),
        ("http://img.example:0/a.jpg", "port 0 is not allowed"),
        ("http://[::1/a.jpg", "malformed URL"),
        ("http://img example/a.jpg", "whitespace or control characters"),
        ("http://img.example/a.jpg\n", "whitespace or control characters"),
        ("http://img.example/a\x00.jpg", "whitespace or control characters"),
        ("https://img.example/" + "a" * 2048, "longer than 2048 characters"),
    ],
)
def test_invalid_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_url_syntax(url)


def test_max_length_is_configurable() -> None:
    url = "https://img.example/" + "a" * 30
    check_url_syntax(url, max_length=len(url))
    with pytest.raises(ValueError, match="longer than 40 characters"):
        check_url_syntax(url, max_length=40)


def _fake_getaddrinfo(addresses: list[str]) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]
    return getaddrinfo


async def test_resolution_refuses_a_host_with_any_private_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo(["8.8.8.8", "10.0.0.5"]))
    with pytest.raises(AddressNotAllowed, match="source address not allowed"):
        await resolve_allowed_addresses("mixed.example", 443, allow_private=False)


async def test_resolution_returns_unique_public_addresses_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(
        loop, "getaddrinfo", _fake_getaddrinfo(["2001:4860:4860::8888", "8.8.8.8", "8.8.8.8"])
    )
    addresses = await resolve_allowed_addresses("dns.example", 443, allow_private=False)
    assert addresses == ["2001:4860:4860::8888", "8.8.8.8"]


async def test_resolution_with_no_answer_is_an_os_error(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo([]))
    with pytest.raises(OSError):
        await resolve_allowed_addresses("empty.example", 80, allow_private=True)


async def test_loopback_resolves_only_when_private_networks_are_allowed() -> None:
    assert await resolve_allowed_addresses("127.0.0.1", 80, allow_private=True) == ["127.0.0.1"]
    with pytest.raises(AddressNotAllowed):
        await resolve_allowed_addresses("127.0.0.1", 80, allow_private=False)


async def test_custom_checker_replaces_the_public_rule() -> None:
    addresses = await resolve_allowed_addresses(
        "127.0.0.1", 80, allow_private=False, is_allowed=lambda ip: ip.is_loopback
    )
    assert addresses == ["127.0.0.1"]


async def test_unresolvable_host_raises_os_error() -> None:
    with pytest.raises(OSError):
        await resolve_allowed_addresses("no-such-host.invalid", 80, allow_private=False)
