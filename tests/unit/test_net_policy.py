"""Unit tests of the network policy: address classes, URL syntax, resolution."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import socket
from typing import Any

import pytest

from pixpipe.net_policy import (
    PLAIN_URL_PATTERN,
    AddressNotAllowed,
    check_url_syntax,
    check_webhook_url,
    is_public_address,
    literal_address,
    resolve_allowed_addresses,
    url_host,
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
        "https://bücher.example/a.jpg",
        "https://img_cdn.example./a.jpg",
        "http://2130706433/a.jpg",  # an address in decimal: the webhook rule looks closer
        "http://0x7f.1/a.jpg",
        "http://a.example/\\@b.example",
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
        ("https://img.example/" + "a" * 2048, "2068 characters long, over the limit of 2048"),
        ("http://img.example\u200b/a.jpg", "whitespace or control characters"),
        ("http://img.example\u3000/a.jpg", "whitespace or control characters"),
        ("http://img.example\\@evil.example/", "credentials in URLs are not allowed"),
        ("http://img.example:65536/a.jpg", "malformed URL"),
        # Hosts the resolver or httpx would only refuse later (UnicodeError, InvalidURL).
        ("http://a..b/", "'a..b' is not a valid host name"),
        ("http://.img.example/", "is not a valid host name"),
        ("http://-img.example/", "is not a valid host name"),
        ("http://img-.example/", "is not a valid host name"),
        ("http://%31%32%37.0.0.1/", "is not a valid host name"),
        ("http://" + "a" * 64 + ".example/", "is not a valid host name"),
        ("http://" + "a." * 127 + "example/", "longer than 253 characters"),
        ("http://①②⑦.0.0.1/", "host is not a valid domain name"),
        ("http://ＥＸＡＭＰＬＥ.com/", "host is not a valid domain name"),
        ("http://999.0.0.1/", "is not a valid IPv4 address"),
        ("http://1.2.3.4.5/", "is not a valid IPv4 address"),
        ("http://0x100000000/", "is not a valid IPv4 address"),
        ("http://09.0.0.1/", "is not a valid IPv4 address"),
        ("http://[fe80::1%25eth0]/", "IPv6 zone"),
    ],
)
def test_invalid_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_url_syntax(url)


def test_max_length_is_configurable() -> None:
    url = "https://img.example/" + "a" * 30
    check_url_syntax(url, max_length=len(url))
    with pytest.raises(ValueError, match="over the limit of 40"):
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


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.0.0.1.", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("::1", "::1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
    ],
)
def test_literal_addresses_are_read_in_every_form_the_resolver_reads(
        host: str, address: str) -> None:
    assert literal_address(host) == ipaddress.ip_address(address)
    if ":" not in host and not host.endswith("."):
        # The C library reads them the same way (getaddrinfo uses inet_aton for numbers).
        assert ipaddress.IPv4Address(socket.inet_aton(host)) == literal_address(host)


@pytest.mark.parametrize("host", ["img.example", "xn--bcher-kva.example", "1.example",
                                  "0x7f.example"])
def test_host_names_are_not_addresses(host: str) -> None:
    assert literal_address(host) is None


def test_the_host_is_what_httpx_connects_to() -> None:
    assert url_host("http://IMG.Example:8080/a") == "img.example"
    assert url_host("http://[::FFFF:127.0.0.1]/") == "::ffff:127.0.0.1"
    assert url_host("http://bücher.example/") == "xn--bcher-kva.example"
    assert url_host("http://127\u30020\u30020\u30021/") == "127.0.0.1"  # ideographic full stops


PRIVATE_WEBHOOKS = [
    "http://127.0.0.1/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://0x7f.0.0.1/hook",
    "http://0x7f000001/hook",
    "http://127\u30020\u30020\u30021/hook",
    "http://0.0.0.0/hook",
    "http://0/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook",
    "http://[::1]/hook",
    "http://[::]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[::ffff:a9fe:a9fe]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://[64:ff9b::a00:1]/hook",
    "http://localhost:8000/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
]


@pytest.mark.parametrize("url", PRIVATE_WEBHOOKS)
def test_a_webhook_to_a_private_address_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="webhooks must go to a public address"):
        check_webhook_url(url, allow_private=False)
    check_webhook_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://hooks.example/pixpipe", "http://8.8.8.8/hook",
                                 "http://[2606:4700:4700::1111]/hook", "http://134744072/hook",
                                 "https://localhost.example/hook"])
def test_a_webhook_to_a_public_address_or_a_name_passes(url: str) -> None:
    check_webhook_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://a..b/", "http://①②⑦.0.0.1/", "ftp://hooks.example/",
                                 "https://user:pw@hooks.example/"])
def test_a_malformed_webhook_is_refused_even_when_private_networks_are_allowed(
        url: str) -> None:
    with pytest.raises(ValueError):
        check_webhook_url(url, allow_private=True)


def test_urls_the_fast_pattern_accepts_pass_the_rule() -> None:
    """Callers accept PLAIN_URL_PATTERN's matches without a closer look: it must never let
    through what check_url_syntax refuses."""
    plain = re.compile(PLAIN_URL_PATTERN, re.ASCII)
    host_pieces = ["a", "Z", "0", "9", "-", ".", "..", "_", "%", "@", "255", "256", "1.2.3.4",
                   "0x7f", "x" * 63, "y" * 64, "\\"]
    tails = ["", ":", ":0", ":80", ":08", ":65535", ":65536", "/", "/a,b", "/ ", "?q", "#f",
             "/@x", "\\@x"]
    generator = random.Random(1234)
    accepted = 0
    for _ in range(20_000):
        host = "".join(generator.choice(host_pieces) for _ in range(generator.randint(1, 6)))
        url = generator.choice(["http://", "https://", "ftp://"]) + host + \
            generator.choice(tails) + generator.choice(tails)
        if plain.fullmatch(url):
            accepted += 1
            check_url_syntax(url)
    assert accepted > 100  # the generator does reach the pattern
