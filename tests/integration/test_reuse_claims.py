"""Claims on encodes under way: a live worker keeps its claim, a dead worker's goes stale
soon, so workers waiting for the same source are not held for long by a killed worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from pixpipe.codec import TransformOptions
from pixpipe.db.engine import create_engine
from pixpipe.db.models import ContentClaim
from pixpipe.db.reuse import ReuseIndex
from pixpipe.db.transactions import TransactionRunner
from pixpipe.domain import ImageFailure, ImageJob, ImageOutcome
from pixpipe.fetcher import FetchedImage
from pixpipe.storage import ImageStore
from pixpipe_services.worker import reuse
from pixpipe_services.worker.reuse import CLAIM_STALE, OutputReuse, content_key, options_key

KEY = "c" * 64


@pytest.fixture
async def index(database_url: str) -> AsyncIterator[ReuseIndex]:
    engine = create_engine(database_url)
    writes = TransactionRunner(engine)
    try:
        yield ReuseIndex(engine, writes)
    finally:
        async with engine.begin() as connection:
            await connection.execute(delete(ContentClaim))
        writes.dispose()
        await engine.dispose()


async def claimed_at(index: ReuseIndex, key: str = KEY) -> datetime | None:
    async with index._engine.connect() as connection:
        moment = await connection.scalar(
            select(ContentClaim.claimed_at).where(ContentClaim.content_key == key))
    if moment is not None and moment.tzinfo is None:  # SQLite hands back naive UTC
        moment = moment.replace(tzinfo=UTC)
    return moment


async def age_claim(index: ReuseIndex, by: timedelta) -> None:
    """What the clock does to the claim of a worker that stopped refreshing it."""
    async with index._engine.begin() as connection:
        await connection.execute(update(ContentClaim).where(ContentClaim.content_key == KEY)
                                 .values(claimed_at=datetime.now(UTC) - by))


async def test_a_claim_is_held_while_fresh_and_taken_over_once_stale(
        index: ReuseIndex) -> None:
    assert await index.claim(KEY, stale_after=CLAIM_STALE)
    assert not await index.claim(KEY, stale_after=CLAIM_STALE)
    await age_claim(index, CLAIM_STALE + timedelta(seconds=1))
    assert await index.claim(KEY, stale_after=CLAIM_STALE)


async def test_refreshing_keeps_an_old_claim_held(index: ReuseIndex) -> None:
    assert await index.claim(KEY, stale_after=CLAIM_STALE)
    await age_claim(index, CLAIM_STALE + timedelta(seconds=1))
    await index.refresh_claim(KEY)
    assert not await index.claim(KEY, stale_after=CLAIM_STALE)


def test_a_dead_workers_claim_goes_stale_well_within_a_jobs_lifetime() -> None:
    # Waiting workers keep their jobs alive meanwhile; a minute would hold them past the
    # lost-job sweeper's patience on a short ack wait.
    assert timedelta(seconds=30) >= CLAIM_STALE
    assert CLAIM_STALE.total_seconds() >= reuse.CLAIM_REFRESH_SECONDS * 3


async def test_a_long_encode_keeps_refreshing_its_claim(
        index: ReuseIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reuse, "CLAIM_REFRESH_SECONDS", 0.05)
    reuser = OutputReuse(index, ImageStore(tmp_path))
    options = TransformOptions()
    source = b"the same source bytes"
    key = content_key(source, options_key(options))
    claim_times: list[datetime] = []

    async def slow_encode() -> ImageOutcome:
        while len(claim_times) < 3:
            moment = await claimed_at(index, key)
            assert moment is not None, "the claim vanished while its encode ran"
            if not claim_times or moment > claim_times[-1]:
                claim_times.append(moment)
            await asyncio.sleep(0.02)
        return ImageFailure(reason="not offered for reuse")

    job = ImageJob(request_id=str(uuid.uuid4()), image_id=uuid.uuid4().hex,
                   url="http://origin.test/a.jpg")
    fetched = FetchedImage(url=job.url, content=source, content_type="image/jpeg")
    outcome = await asyncio.wait_for(reuser.encode_once(job, options, fetched, slow_encode),
                                     timeout=30)
    assert isinstance(outcome, ImageFailure)
    assert len(claim_times) == 3  # claimed, then refreshed twice while encoding
    assert await claimed_at(index, key) is None  # a failed encode releases its claim
