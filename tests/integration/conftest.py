"""Integration fixtures: pixpipe components in-process against real NATS and databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pixpipe.bus import Bus
from pixpipe.db.engine import create_engine, session_factory
from pixpipe.db.repository import Repository
from pixpipe.dev.webhook_secret import new_webhook_secret
from pixpipe.settings import Settings
from pixpipe_services.worker.main import work
from tests.support.http_server import CorpusHttpServer
from tests.support.infrastructure import NatsServer


@pytest.fixture
def http_server(corpus_dir: Path) -> Iterator[CorpusHttpServer]:
    with CorpusHttpServer(corpus_dir) as server:
        yield server


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str, nats_server: NatsServer,
                  ) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data", "database_url": database_url,
            "nats_url": nats_server.url, "allow_private_networks": True,
            "worker_concurrency": 4, "codec_processes": 1, "job_ack_wait_seconds": 5.0,
            "job_max_deliver": 3, "job_retry_backoff_seconds": [0.1],
            "shutdown_grace_seconds": 2.0, "nats_request_timeout_seconds": 3.0,
            "webhook_secret": new_webhook_secret(),
        }
        values.update(overrides)
        return Settings(**values)
    return build


@pytest.fixture
async def repository(database_url: str) -> AsyncIterator[Repository]:
    engine = create_engine(database_url)
    opened = Repository(session_factory(engine))
    yield opened
    opened.close()
    await engine.dispose()


@pytest.fixture
async def bus(make_settings: Callable[..., Settings]) -> AsyncIterator[Bus]:
    connected = await Bus.connect(make_settings().nats, name="pixpipe-tests")
    yield connected
    await connected.close()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    """A worker (consumer, codec pool, fetcher) in this event loop until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(work(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
