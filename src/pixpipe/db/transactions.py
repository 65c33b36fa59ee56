"""Runs short write transactions as synchronous units of work.

On SQLite the database-wide write lock is held for the whole transaction, so its statements
must not wait on a busy event loop between each other: the transaction runs in a thread on a
synchronous engine. Units that arrive while one transaction is running are committed together
in the next one (group commit): SQLite admits one writer at a time anyway, and one commit for
several images costs little more than one for a single image. The transactions run one after
another on one connection kept open for them (checking a connection out of a pool and resetting
it cost as much CPU as the statements).

On PostgreSQL units are grouped the same way and run through the async engine's greenlet
bridge, one transaction per group: a pool checkout (with its pre-ping), a BEGIN and a COMMIT
per image cost a worker more than its statements (1.6 ms of worker CPU per failing image
before, see docs/design.md). Groups of different workers may lock two requests' rows in
opposite orders; PostgreSQL then aborts one group, and its units run again one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from pixpipe.db.engine import tune_sqlite

T = TypeVar("T")
Work = Callable[[Connection], Any]


class TransactionRunner:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer: _WriteConnection | None = None
        self._queued: list[tuple[Work, asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.batches = 0  # SQLite transactions begun for queued units (tests, diagnostics)
        if engine.dialect.name == "sqlite":
            url = engine.url.set(drivername="sqlite")
            sync_engine = create_engine(url, connect_args={"timeout": 30,
                                                           "check_same_thread": False})
            event.listen(sync_engine, "connect", tune_sqlite)
            self._writer = _WriteConnection(sync_engine)

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` in a transaction and commit it; return its result.

        ``work`` must touch the database only through ``connection`` and be safe to run
        again: it may share its transaction with other units, and when one of those fails
        the others run again, each on its own.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        # A caller that stops waiting does not stop the unit: it is committed either way.
        return await asyncio.shield(future)

    async def _run_together(self, works: list[Work]) -> list[Any]:
        if self._writer is not None:
            return await asyncio.to_thread(self._writer.run_together, works)
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(
                    lambda sync: [work(sync) for work in works])
        except Exception as error:
            if len(works) == 1:
                return [error]
        return [await self._run_alone(work) for work in works]

    async def _run_alone(self, work: Work) -> Any:
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(work)
        except Exception as error:
            return error

    async def _commit_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            self.batches += 1
            try:
                outcomes = await self._run_together([work for work, _ in batch])
            except asyncio.CancelledError:
                for _, future in [*batch, *self._queued]:
                    future.cancel()
                raise
            except Exception as error:
                outcomes = [error] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def dispose(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _WriteConnection:
    """One connection of a synchronous engine for the committer's transactions, which never
    overlap; opened on first use and again after an error that invalidated it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None

    def run_together(self, works: list[Work]) -> list[Any]:
        """One transaction for all of ``works``; if it fails, each runs again on its own so
        that only the unit at fault reports an error."""
        try:
            return self._transaction(lambda connection: [work(connection) for work in works])
        except Exception as error:
            if len(works) == 1:
                return [error]
        return [self._run_alone(work) for work in works]

    def _run_alone(self, work: Work) -> Any:
        try:
            return self._transaction(work)
        except Exception as error:
            return error

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        connection = self._connection
        if connection is None or connection.invalidated or connection.closed:
            self._close_connection()
            connection = self._connection = self._engine.connect()
        with connection.begin():
            return work(connection)

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        """Close the connection and the engine's pool."""
        self._close_connection()
        self._engine.dispose()
