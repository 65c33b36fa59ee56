"""Builds a grpc.aio server with health checking, reflection and bearer-token auth."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pixpipe.auth import Authenticator, bearer_token

_PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses every call but health and reflection whose bearer token stands for no one."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

        async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API token")

        self._deny = deny

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method or ""
        if method.startswith(_PUBLIC_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if await self._authenticator.authenticate(token) is not None:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is not None and handler.request_streaming:
            if handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(self._deny_stream)
            return grpc.stream_unary_rpc_method_handler(self._deny)
        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(self._deny_stream)
        return grpc.unary_unary_rpc_method_handler(self._deny)

    async def _deny_stream(self, _request: Any, context: grpc.aio.ServicerContext[Any, Any],
                           ) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API token")


class GrpcServer:
    """A grpc.aio server bound to one port, serving the given services plus health."""

    def __init__(self, *, host: str, port: int, authenticator: Authenticator) -> None:
        interceptors = [AuthInterceptor(authenticator)] if authenticator.required else []
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ])
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self._service_names: list[str] = []

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any,
            service_name: str) -> None:
        register(servicer, self.server)
        self._service_names.append(service_name)

    async def start(self) -> None:
        names: Iterable[str] = (*self._service_names, health.SERVICE_NAME,
                                reflection.SERVICE_NAME)
        reflection.enable_server_reflection(tuple(names), self.server)
        await self.server.start()
        for name in ("", *self._service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0, *, drain_seconds: float = 0.0) -> None:
        """Report NOT_SERVING first so balancers stop sending calls, keep serving for
        ``drain_seconds`` while they notice, then finish the calls in flight."""
        await self.health.enter_graceful_shutdown()
        if drain_seconds > 0:
            await asyncio.sleep(drain_seconds)
        await self.server.stop(grace)
