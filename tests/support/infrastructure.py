"""Real infrastructure for tests: a NATS JetStream server and a fresh database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats
from sqlalchemy.engine import make_url

from pixpipe.bus import EVENTS_STREAM, JOBS_STREAM
from pixpipe.db.migrate import upgrade
from pixpipe.dev.embedded_nats import free_port, start_nats_server

TEST_NATS_URL_VARIABLE = "PIXPIPE_TEST_NATS_URL"
TEST_DATABASE_URL_VARIABLE = "PIXPIPE_TEST_DATABASE_URL"


@dataclass
class NatsServer:
    url: str
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    store_dir: Path | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Start again on the same port and storage (JetStream state survives)."""
        assert self.store_dir is not None
        self.stop()
        self.process = start_nats_server(port=self.port, store_dir=self.store_dir)


def start_own_nats(store_dir: Path) -> NatsServer:
    port = free_port()
    process = start_nats_server(port=port, store_dir=store_dir)
    return NatsServer(url=f"nats://127.0.0.1:{port}", process=process, port=port,
                      store_dir=store_dir)


async def delete_pixpipe_streams(url: str) -> None:
    """Start a test session on a shared server from empty streams."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for stream in (JOBS_STREAM, EVENTS_STREAM):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
    finally:
        await client.close()


@contextmanager
def nats_for_tests(tmp_dir: Path) -> Iterator[NatsServer]:
    """The machine's NATS when PIXPIPE_TEST_NATS_URL says so, else our own nats-server."""
    shared = os.environ.get(TEST_NATS_URL_VARIABLE)
    if shared:
        asyncio.run(delete_pixpipe_streams(shared))
        yield NatsServer(url=shared)
        return
    server = start_own_nats(tmp_dir / "jetstream")
    try:
        yield server
    finally:
        server.stop()


async def _admin(url: str, statement: str) -> None:
    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host or "127.0.0.1", port=parsed.port or 5432,
        user=parsed.username or "postgres", password=parsed.password,
        database=parsed.database or "postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A new, migrated database on the PostgreSQL server of ``base_url``; dropped afterwards."""
    name = f"pixpipe_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(base_url, f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def database_for_tests(tmp_dir: Path) -> Iterator[str]:
    """PostgreSQL when PIXPIPE_TEST_DATABASE_URL is set, else a SQLite file; migrated."""
    base = os.environ.get(TEST_DATABASE_URL_VARIABLE)
    if base:
        with postgres_database(base) as url:
            yield url
        return
    url = f"sqlite+aiosqlite:///{tmp_dir / 'pixpipe.db'}"
    upgrade(url)
    yield url
