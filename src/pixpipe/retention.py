"""Deletes finished requests older than PIXPIPE_RETENTION_DAYS: their outputs, then their rows."""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pixpipe.db.models import ImageRecord, RequestRecord
from pixpipe.object_storage import StorageUnavailable
from pixpipe.runtime import sleep_unless_stopped
from pixpipe.settings import StorageSettings
from pixpipe.storage import s3_store_from_settings

log = logging.getLogger(__name__)

# Requests per round: one transaction deletes their rows (products, images and webhook rows
# go with them through ON DELETE CASCADE), after one batch delete of their outputs.
BATCH_REQUESTS = 10

# Removes the outputs of some requests: (request ids, their images' relative paths).
OutputRemover = Callable[[Sequence[str], Sequence[str]], None]


def output_remover(storage: StorageSettings) -> OutputRemover:
    store = s3_store_from_settings(storage)
    if store is not None:
        return lambda _request_ids, paths: store.delete(list(paths))

    def remove_directories(request_ids: Sequence[str], _paths: Sequence[str]) -> None:
        for request_id in request_ids:
            shutil.rmtree(storage.images_dir / request_id, ignore_errors=True)

    return remove_directories


async def purge_expired(engine: AsyncEngine, remove_outputs: OutputRemover, *,
                        cutoff: datetime, batch: int = BATCH_REQUESTS) -> int:
    """Delete every finished request created before ``cutoff``; returns how many.

    Outputs go first: a crash in between leaves rows whose files are gone (deleted again on
    the next round), never files no row points to.
    """
    expired = (select(RequestRecord.id)
               .where(or_(RequestRecord.status == "completed", RequestRecord.status == "failed"),
                      RequestRecord.created_at < cutoff)
               .limit(batch))
    purged = 0
    while True:
        async with engine.connect() as connection:
            request_ids = list((await connection.scalars(expired)).all())
            if not request_ids:
                return purged
            paths = [path for path in (await connection.scalars(
                select(ImageRecord.output_path).where(
                    ImageRecord.request_id.in_(request_ids),
                    ImageRecord.output_path.is_not(None)))).all() if path]
        await asyncio.to_thread(remove_outputs, request_ids, paths)
        async with engine.begin() as connection:
            await connection.execute(delete(RequestRecord).where(
                RequestRecord.id.in_(request_ids)))
        purged += len(request_ids)


def lifecycle_days(retention_days: float) -> int:
    """A day past the purge: an object is written after its request began, so it never
    expires before its rows are deleted, only when a purge failed to remove it."""
    return math.ceil(retention_days) + 1


async def set_bucket_expiry(storage: StorageSettings) -> bool | None:
    """The bucket's lifecycle rule as a backstop to the batch deletes (outputs a crashed purge
    left, objects no row names); None without object storage, False where the server has no
    lifecycle rules or refused this one."""
    store = s3_store_from_settings(storage)
    if store is None or storage.retention_days is None:
        return None
    days = lifecycle_days(storage.retention_days)
    try:
        applied = await asyncio.to_thread(store.expire_after, days)
    except StorageUnavailable as error:
        log.warning("retention: could not set the bucket lifecycle rule (%s); batch deletes "
                    "only", error.reason)
        return False
    if applied:
        log.info("retention: %s expires objects %d days after they are written", store.url, days)
    else:
        log.info("retention: %s keeps no lifecycle rules; batch deletes only", store.url)
    return applied


async def keep_purging(storage: StorageSettings, engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Every ``retention_interval_seconds`` until ``stop``; a failed round is tried again."""
    assert storage.retention_days is not None
    remove_outputs = output_remover(storage)
    await set_bucket_expiry(storage)
    while not stop.is_set():
        cutoff = datetime.now(UTC) - timedelta(days=storage.retention_days)
        try:
            purged = await purge_expired(engine, remove_outputs, cutoff=cutoff)
        except Exception:
            log.exception("retention: purge failed; trying again next round")
        else:
            if purged:
                log.info("retention: deleted %d requests created before %s", purged,
                         cutoff.isoformat())
        await sleep_unless_stopped(stop, storage.retention_interval_seconds)
