"""Unit tests of the call caps: slots per key and who a peer is."""

from __future__ import annotations

import grpc
import pytest

from pixpipe.call_limits import CallSlots, exhausted_status, peer_host


def test_slots_are_counted_per_key_and_forgotten_when_free() -> None:
    slots = CallSlots(2)
    assert slots.try_take("a") and slots.try_take("a")
    assert not slots.try_take("a")
    assert slots.try_take("b")
    slots.release("a")
    assert slots.held("a") == 1 and slots.try_take("a")
    for key in ("a", "a", "b"):
        slots.release(key)
    assert slots._held == {}


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:10.0.0.7:5123", "10.0.0.7"),
    ("ipv6:[::1]:5123", "::1"),
    ("ipv6:%5B2001:db8::1%5D:443", "2001:db8::1"),
    ("unix:/run/pixpipe.sock", "unix:/run/pixpipe.sock"),
])
def test_a_peer_is_its_host_without_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_exhausted_status_carries_a_retry_hint() -> None:
    status = exhausted_status("2 uploads are already in progress", 1)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "2 uploads are already in progress; retry in 1 s"
