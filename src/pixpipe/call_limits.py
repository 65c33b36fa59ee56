"""Caps on concurrent gRPC calls: a call past its cap is refused RESOURCE_EXHAUSTED, with a hint
of when to retry (google.rpc.RetryInfo, and the same in the message for readers of logs)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable
from typing import Any, NoReturn
from urllib.parse import unquote

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pixpipe.grpc_errors import abort_with_status


class CallSlots:
    """At most ``limit`` calls at once per key; the event loop's single thread makes taking a
    slot atomic, so there is no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[Hashable] = Counter()

    def try_take(self, key: Hashable = None) -> bool:
        if self._held[key] >= self.limit:
            return False
        self._held[key] += 1
        return True

    def release(self, key: Hashable = None) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]  # keys come and go with the calls: keep none that are idle

    def held(self, key: Hashable = None) -> int:
        return self._held[key]


def exhausted_status(message: str, retry_after_seconds: int) -> grpc.Status:
    detail = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED,
                               message=f"{message}; retry in {retry_after_seconds} s")
    detail.details.add().Pack(error_details_pb2.RetryInfo(
        retry_delay=Duration(seconds=retry_after_seconds)))
    return rpc_status.to_status(detail)


async def abort_exhausted(context: grpc.aio.ServicerContext[Any, Any], message: str,
                          retry_after_seconds: int) -> NoReturn:
    await abort_with_status(context, exhausted_status(message, retry_after_seconds))


def retry_delay_seconds(error: grpc.aio.AioRpcError | grpc.RpcError) -> float | None:
    """The RetryInfo delay a client-side error carries, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def client_of(context: grpc.aio.ServicerContext[Any, Any], *, by_token: bool) -> str:
    """Who is calling, for per-client caps: the bearer token when the server requires one (a
    digest, so no secret is kept), else the peer's host without its port."""
    if by_token:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                return "token:" + hashlib.sha256(raw).hexdigest()[:32]
    return peer_host(context.peer())


def peer_host(peer: str) -> str:
    """The host of a gRPC peer: "ipv4:10.0.0.7:5123" gives 10.0.0.7, "ipv6:[::1]:5123" gives
    ::1; other kinds (unix sockets) are returned as they are."""
    kind, _, address = unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = address.rpartition(":")
        return host.strip("[]") or address
    return peer
