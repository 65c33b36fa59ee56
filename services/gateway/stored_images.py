"""``/processed_images/...``: files from the data dir, or a way to the object in the bucket.

Public: output URLs are handed out in webhooks and CSVs to be fetched without a token.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from pixpipe.object_storage import S3Store, StorageUnavailable, StoredObjectMissing
from pixpipe.settings import Settings
from pixpipe.status_messages import PROCESSED_IMAGES_ROUTE
from pixpipe.storage import s3_store_from_settings

# <request id>/<image id>.<ext>: nothing else is an output, and no key outside the prefix.
_OUTPUT_PATH = re.compile(r"[0-9a-fA-F-]{32,36}/[0-9a-fA-F-]{32,36}\.[a-z0-9]{2,5}")
# A presigned URL expires, so a redirect may be cached only for a small part of its life.
_REDIRECT_MAX_AGE_SECONDS = 60


def mount_processed_images(app: FastAPI, settings: Settings) -> None:
    store = s3_store_from_settings(settings)
    if store is None:
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        app.mount(PROCESSED_IMAGES_ROUTE, StaticFiles(directory=settings.images_dir),
                  name="processed_images")
        return
    app.include_router(object_storage_router(settings, store))


def object_storage_router(settings: Settings, store: S3Store) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    not_found = Response(status_code=404)

    @router.get(PROCESSED_IMAGES_ROUTE + "/{path:path}")
    async def processed_image(path: str) -> Response:
        if not _OUTPUT_PATH.fullmatch(path):
            return not_found
        if settings.s3_serve == "redirect":
            url = store.presigned_url(path, expires_seconds=settings.s3_presign_seconds,
                                      endpoint_url=settings.s3_public_endpoint_url)
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
