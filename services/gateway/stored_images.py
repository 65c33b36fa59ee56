"""``/processed_images/...``: files from the data dir, or a way to the object in the bucket.

Public in the open and single-token modes: output URLs are handed out in webhooks and CSVs to
be fetched without a token (their ids are unguessable). With API keys, only a bearer of the
key that uploaded the request gets them; any other key is told they do not exist.
"""

from __future__ import annotations

import re

import grpc
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from pixpipe.object_storage import S3Store, StorageUnavailable, StoredObjectMissing
from pixpipe.settings import StorageSettings
from pixpipe.status_messages import PROCESSED_IMAGES_ROUTE
from pixpipe.storage import s3_store_from_settings
from pixpipe.v1 import status_pb2
from pixpipe_services.gateway.dependencies import CallerClients, Clients, Credentials
from pixpipe_services.gateway.errors import response_for_rpc_error

# <request id>/<image id>.<ext>: nothing else is an output, and no key outside the prefix.
_OUTPUT_PATH = re.compile(r"[0-9a-fA-F-]{32,36}/[0-9a-fA-F-]{32,36}\.[a-z0-9]{2,5}")
# A presigned URL expires, so a redirect may be cached only for a small part of its life.
_REDIRECT_MAX_AGE_SECONDS = 60


def mount_processed_images(app: FastAPI, storage: StorageSettings, *, api_keys: bool) -> None:
    store = s3_store_from_settings(storage)
    if store is None and not api_keys:
        storage.images_dir.mkdir(parents=True, exist_ok=True)
        app.mount(PROCESSED_IMAGES_ROUTE, StaticFiles(directory=storage.images_dir),
                  name="processed_images")
        return
    app.include_router(processed_images_router(storage, store, api_keys=api_keys))


def processed_images_router(storage: StorageSettings, store: S3Store | None, *,
                            api_keys: bool) -> APIRouter:
    """The route when it needs code: objects in a bucket, or files that only the key that
    uploaded their request may read (PIXPIPE_API_KEYS)."""
    router = APIRouter(include_in_schema=False)
    not_found = Response(status_code=404)

    @router.get(PROCESSED_IMAGES_ROUTE + "/{path:path}")
    async def processed_image(path: str, clients: Clients,
                              credentials: Credentials) -> Response:
        if not _OUTPUT_PATH.fullmatch(path):
            return not_found
        if api_keys:
            refusal = await _refusal_unless_owned(clients, credentials, path.split("/")[0])
            if refusal is not None:
                return refusal
        if store is None:
            file = storage.images_dir / path
            return FileResponse(file) if file.is_file() else not_found
        if storage.s3_serve == "redirect":
            url = store.presigned_url(path, expires_seconds=storage.s3_presign_seconds,
                                      endpoint_url=storage.s3_public_endpoint_url)
            return RedirectResponse(url, status_code=307, headers={
                "Cache-Control": f"private, max-age={_REDIRECT_MAX_AGE_SECONDS}"})
        try:
            stored = await run_in_threadpool(store.open, path)
        except StoredObjectMissing:
            return not_found
        except StorageUnavailable as error:
            return Response(f"object storage unavailable: {error.reason}\n", status_code=503,
                            media_type="text/plain", headers={"Retry-After": "5"})
        headers = {name: value for name, value in (
            ("Content-Length", str(stored.length) if stored.length is not None else None),
            ("ETag", stored.etag), ("Cache-Control", stored.cache_control)) if value}
        return StreamingResponse(iterate_in_threadpool(stored.chunks()),
                                 media_type=stored.content_type, headers=headers)

    return router


async def _refusal_unless_owned(clients: CallerClients,
                                credentials: HTTPAuthorizationCredentials | None,
                                request_id: str) -> Response | None:
    """None when the caller's key uploaded the request; else 401 (no key) or 404 (another
    key's request: it does not exist for this caller)."""
    if credentials is None:
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
    try:
        await clients.status.GetStatus(
            status_pb2.GetStatusRequest(request_id=request_id, summary_only=True),
            metadata=clients.metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return Response(status_code=404)
        return response_for_rpc_error(error)
    return None
