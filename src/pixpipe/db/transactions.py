"""Runs a short write transaction as one synchronous unit of work.

On SQLite the database-wide write lock is held for the whole transaction, so its statements
must not wait on a busy event loop between each other: the transaction runs in a thread on a
synchronous engine. On PostgreSQL it runs through the async engine's greenlet bridge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from pixpipe.db.engine import tune_sqlite

T = TypeVar("T")


class TransactionRunner:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sync_engine: Engine | None = None
        if engine.dialect.name == "sqlite":
            url = engine.url.set(drivername="sqlite")
            self._sync_engine = create_engine(url, connect_args={"timeout": 30,
                                                                 "check_same_thread": False})
            event.listen(self._sync_engine, "connect", tune_sqlite)

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` in one transaction and commit it."""
        if self._sync_engine is not None:
            return await asyncio.to_thread(self._run_sync, self._sync_engine, work)
        async with self._engine.begin() as connection:
            return await connection.run_sync(work)

    @staticmethod
    def _run_sync(engine: Engine, work: Callable[[Connection], T]) -> T:
        with engine.begin() as connection:
            return work(connection)

    def dispose(self) -> None:
        if self._sync_engine is not None:
            self._sync_engine.dispose()
