"""Retention: expired requests lose their outputs (directory or bucket) and their rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pixpipe import object_storage
from pixpipe.db.engine import create_engine
from pixpipe.db.models import ImageRecord, ProductRecord, RequestRecord
from pixpipe.db.reuse import ReuseIndex
from pixpipe.db.transactions import TransactionRunner
from pixpipe.domain import ImageSuccess
from pixpipe.object_storage import LIFECYCLE_RULE_ID
from pixpipe.retention import lifecycle_days, output_remover, purge_expired, set_bucket_expiry
from pixpipe.settings import Settings
from pixpipe.storage import ImageStore, store_from_settings
from tests.support.seaweedfs import SeaweedS3

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import LifecycleRuleTypeDef

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def _request(engine: AsyncEngine, settings: Settings, *, created_at: datetime,
                   status: str = "completed", images: int = 3) -> tuple[str, list[str]]:
    """A request with its product and images in the database and its outputs stored."""
    request_id = str(uuid.uuid4())
    store = store_from_settings(settings.storage)
    paths = []
    async with engine.begin() as connection:
        await connection.execute(insert(RequestRecord).values(
            id=request_id, status=status, total=images, created_at=created_at,
            updated_at=created_at))
        product_id = (await connection.execute(insert(ProductRecord).values(
            request_id=request_id, serial_number=1, product_name="P", line=2,
            cells=[]).returning(ProductRecord.id))).scalar_one()
        for position in range(images):
            image_id = uuid.uuid4().hex
            path = store.relative_path(request_id, image_id, "jpg")
            store.write(path, b"\xff\xd8output")
            paths.append(path)
            await connection.execute(insert(ImageRecord).values(
                id=image_id, request_id=request_id, product_id=product_id, serial_number=1,
                position=position, input_url="http://x/y.jpg", status="completed",
                output_path=path, updated_at=created_at))
    return request_id, paths


async def _count(engine: AsyncEngine, model: type[RequestRecord] | type[ImageRecord],
                 request_ids: list[str]) -> int:
    async with engine.connect() as connection:
        return int((await connection.scalar(
            select(func.count()).select_from(model).where(
                model.request_id.in_(request_ids) if model is ImageRecord
                else RequestRecord.id.in_(request_ids)))) or 0)


async def test_expired_requests_leave_the_data_dir(engine: AsyncEngine, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, retention_days=30)
    old_a, _ = await _request(engine, settings, created_at=OLD)
    old_b, _ = await _request(engine, settings, created_at=OLD, status="failed", images=1)
    unfinished, _ = await _request(engine, settings, created_at=OLD, status="processing")
    recent, _ = await _request(engine, settings, created_at=NOW)

    purged = await purge_expired(engine, output_remover(settings.storage),
                                 cutoff=NOW - timedelta(days=30), batch=1)

    assert purged == 2
    assert not (settings.storage.images_dir / old_a).exists()
    assert not (settings.storage.images_dir / old_b).exists()
    assert await _count(engine, RequestRecord, [old_a, old_b]) == 0
    assert await _count(engine, ImageRecord, [old_a, old_b]) == 0  # cascaded
    for kept in (unfinished, recent):
        assert len(list((settings.storage.images_dir / kept).iterdir())) >= 1
    assert await _count(engine, ImageRecord, [unfinished, recent]) == 6


async def test_expired_requests_leave_the_bucket(engine: AsyncEngine, tmp_path: Path,
                                                 s3_server: SeaweedS3,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    environment = s3_server.environment(prefix=f"retention-{uuid.uuid4().hex[:8]}")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    object_storage._clients.clear()
    settings = Settings(data_dir=tmp_path, retention_days=30)
    prefix = environment["PIXPIPE_STORAGE_URL"].rsplit("/", 1)[-1]
    old, _ = await _request(engine, settings, created_at=OLD, images=4)
    recent, recent_paths = await _request(engine, settings, created_at=NOW)

    assert await purge_expired(engine, output_remover(settings.storage),
                               cutoff=NOW - timedelta(days=30)) == 1

    assert sorted(s3_server.object_keys(prefix=f"{prefix}/")) == sorted(
        f"{prefix}/{path}" for path in recent_paths)
    assert await _count(engine, RequestRecord, [old, recent]) == 1
    assert not settings.storage.images_dir.exists()
    object_storage._clients.clear()


def _output(path: str) -> ImageSuccess:
    return ImageSuccess(output_path=path, bytes_in=100, bytes_out=8, width=1, height=1,
                        quality_used=50, encoder="mozjpeg", effort="balanced")


async def test_purging_an_old_request_keeps_what_a_newer_one_reused(
        engine: AsyncEngine, tmp_path: Path) -> None:
    """A reused output is a copy of its own (a hard link), and the reuse index follows the
    newest user: purging the first request leaves the later copy, and its entry, intact;
    an entry whose only owner is purged goes with it, so nothing offers a deleted file."""
    settings = Settings(data_dir=tmp_path, retention_days=30)
    store = ImageStore(settings.storage.images_dir)
    old, old_paths = await _request(engine, settings, created_at=OLD, images=2)
    recent, recent_paths = await _request(engine, settings, created_at=NOW, images=1)
    assert store.copy(old_paths[0], recent_paths[0])  # what a reuse hit does
    writes = TransactionRunner(engine)
    try:
        index = ReuseIndex(engine, writes)
        await index.record("reused-by-recent", recent, _output(recent_paths[0]))
        await index.record("only-in-old", old, _output(old_paths[1]))

        assert await purge_expired(engine, output_remover(settings.storage),
                                   cutoff=NOW - timedelta(days=30)) == 1

        assert not (settings.storage.images_dir / old).exists()
        assert store.absolute_path(recent_paths[0]).read_bytes() == b"\xff\xd8output"
        known = await index.find("reused-by-recent")
        assert known is not None and known.request_id == recent
        assert await index.find("only-in-old") is None
    finally:
        writes.dispose()


async def test_object_storage_gets_a_lifecycle_backstop(
        tmp_path: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule expires this prefix a day after the purge would; the bucket's other rules
    stay, and setting it again replaces rather than repeats it."""
    environment = s3_server.environment(prefix=f"lifecycle-{uuid.uuid4().hex[:8]}")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    object_storage._clients.clear()
    client = s3_server.client()
    bucket = environment["PIXPIPE_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    other: LifecycleRuleTypeDef = {"ID": "someone-elses", "Status": "Enabled",
                                   "Expiration": {"Days": 400},
                                   "Filter": {"Prefix": "elsewhere/"}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={
        "Rules": [other]})
    try:
        settings = Settings(data_dir=tmp_path, retention_days=29.5)
        assert await set_bucket_expiry(settings.storage) is True
        assert await set_bucket_expiry(settings.storage) is True

        rules = {rule["ID"]: rule for rule in client.get_bucket_lifecycle_configuration(
            Bucket=bucket)["Rules"]}
        assert set(rules) == {"someone-elses", LIFECYCLE_RULE_ID}
        ours = rules[LIFECYCLE_RULE_ID]
        assert ours["Expiration"]["Days"] == lifecycle_days(29.5) == 31
        prefix = environment["PIXPIPE_STORAGE_URL"].rsplit("/", 1)[-1]
        assert ours["Filter"]["Prefix"] == f"{prefix}/"
        assert await set_bucket_expiry(Settings(data_dir=tmp_path).storage) is None  # retention off
    finally:
        client.delete_bucket_lifecycle(Bucket=bucket)
        object_storage._clients.clear()
