"""Write transactions: concurrent units all commit; one failing unit fails only itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from sqlalchemy import Connection, text

from pixpipe.db.engine import create_engine
from pixpipe.db.transactions import TransactionRunner

UNITS = 40


async def test_concurrent_units_commit_once_each_and_a_failure_stays_its_own(
        database_url: str) -> None:
    engine = create_engine(database_url)
    runner = TransactionRunner(engine)
    table = f"transaction_probe_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as connection:
        await connection.execute(text(f"CREATE TABLE {table} (n INTEGER NOT NULL)"))

    def insert(n: int) -> Callable[[Connection], int]:
        def work(connection: Connection) -> int:
            connection.execute(text(f"INSERT INTO {table} (n) VALUES (:n)"), {"n": n})
            return n * 10
        return work

    def failing(connection: Connection) -> int:
        connection.execute(text(f"INSERT INTO {table} (n) VALUES (-1)"))
        raise ValueError("this unit is at fault")

    try:
        half = UNITS // 2
        results = await asyncio.gather(
            *(runner.run(insert(n)) for n in range(half)),
            runner.run(failing),
            *(runner.run(insert(n)) for n in range(half, UNITS)),
            return_exceptions=True)
        async with engine.connect() as connection:
            stored = sorted((await connection.execute(
                text(f"SELECT n FROM {table}"))).scalars())
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE {table}"))
        runner.dispose()
        await engine.dispose()

    assert results[:half] == [n * 10 for n in range(half)]
    assert isinstance(results[half], ValueError)
    assert results[half + 1:] == [n * 10 for n in range(half, UNITS)]
    assert stored == list(range(UNITS))  # every unit once, nothing of the failed one
    # Units queued behind a running transaction were committed together (both databases).
    assert 1 <= runner.batches < UNITS
