"""FastAPI dependencies: settings, the gRPC clients, the API token and the gateway's limits."""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pixpipe import tracing
from pixpipe.client import PixpipeClient
from pixpipe.settings import Settings
from pixpipe.v1 import ingest_pb2_grpc, status_pb2_grpc

UPLOAD_RETRY_SECONDS = 2
STREAM_RETRY_SECONDS = 5

# What the status service accepts (uuid.UUID's canonical form, either case).
UUID_PATTERN = (r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                r"[0-9a-fA-F]{12}$")
RequestId = Annotated[str, Path(pattern=UUID_PATTERN, description="The request's UUID",
                                 examples=["6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"])]

bearer = HTTPBearer(auto_error=False, description="PIXPIPE_API_TOKEN, when the gateway has one")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(get_settings)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


@dataclass(frozen=True)
class CallerClients:
    """The gRPC stubs, with the credentials this caller's calls carry."""

    ingest: ingest_pb2_grpc.IngestServiceAsyncStub
    status: status_pb2_grpc.StatusServiceAsyncStub
    credentials: tuple[tuple[str, str], ...]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The credentials, and with tracing on the current span's context: FastAPI's span
        for the HTTP request (its native telemetry) goes on in the services called."""
        return self.credentials + tuple(tracing.trace_headers().items())


def get_clients(request: Request, settings: AppSettings,
                credentials: Credentials) -> CallerClients:
    """The clients the lifespan opened. With API keys the caller's own key goes with every
    call, so the services answer for that key alone; otherwise the gateway's token does."""
    clients: PixpipeClient | None = getattr(request.app.state, "clients", None)
    if clients is None:
        raise RuntimeError("the gateway is not started: its lifespan has not run")
    metadata = clients.metadata
    if settings.auth.api_keys and credentials is not None:
        metadata = (("authorization", f"Bearer {credentials.credentials}"),)
    return CallerClients(ingest=clients.ingest, status=clients.status, credentials=metadata)


Clients = Annotated[CallerClients, Depends(get_clients)]


async def require_api_token(settings: AppSettings, credentials: Credentials) -> None:
    """With PIXPIPE_API_TOKEN set, the bearer token must be it (compared in constant time).
    With API keys, a bearer token must be there: the services judge it (a key, or that
    token), and answer UNAUTHENTICATED (401) for one that stands for no one."""
    supplied = credentials.credentials if credentials is not None else ""
    auth = settings.auth
    if auth.api_keys:
        if supplied:
            return
    elif not auth.api_token or hmac.compare_digest(supplied.encode(), auth.api_token.encode()):
        return
    raise HTTPException(401, "missing or wrong API token",
                        headers={"WWW-Authenticate": "Bearer"})


class Slots:
    """How many of something are open under each key, refused past a cap."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def take(self, key: str, cap: int) -> bool:
        if self._open[key] >= cap:
            return False
        self._open[key] += 1
        return True

    def give_back(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def open(self, key: str) -> int:
        return self._open[key]


class GatewayLimits:
    """The slots of one app: uploads in flight, and SSE streams by request and by client."""

    def __init__(self) -> None:
        self.uploads = Slots()
        self.streams_by_request = Slots()
        self.streams_by_client = Slots()


def _too_many(what: str, retry_after: int) -> HTTPException:
    return HTTPException(429, f"too many {what} at once; try again in {retry_after} s",
                         headers={"Retry-After": str(retry_after)})


async def upload_slot(request: Request, settings: AppSettings) -> AsyncIterator[None]:
    """Holds one of the gateway's upload slots until the answer is sent."""
    slots: Slots = request.app.state.limits.uploads
    if not slots.take("uploads", settings.limits.gateway_max_concurrent_uploads):
        raise _too_many("uploads", UPLOAD_RETRY_SECONDS)
    try:
        yield
    finally:
        slots.give_back("uploads")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def event_stream_slot(request_id: RequestId, request: Request,
                            settings: AppSettings) -> AsyncIterator[None]:
    """Holds an SSE slot for the request and for the client until the stream ends."""
    limits: GatewayLimits = request.app.state.limits
    client = client_address(request)
    if not limits.streams_by_request.take(request_id.lower(),
                                          settings.limits.gateway_max_streams_per_request):
        raise _too_many("event streams for this request", STREAM_RETRY_SECONDS)
    if not limits.streams_by_client.take(client,
                                         settings.limits.gateway_max_streams_per_client):
        limits.streams_by_request.give_back(request_id.lower())
        raise _too_many("event streams from this client", STREAM_RETRY_SECONDS)
    try:
        yield
    finally:
        limits.streams_by_request.give_back(request_id.lower())
        limits.streams_by_client.give_back(client)

