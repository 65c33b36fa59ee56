"""Recording an accepted upload, products and images in bulk, and failing one never queued.

A request of 100,000 images is a few transactions of rows sent in bulk, not 100,000 ORM
objects: on SQLite ``executemany`` on the DBAPI cursor of the TransactionRunner's connection,
the rows produced as the driver asks for them; on PostgreSQL ``COPY`` through asyncpg's
``copy_records_to_table``. The images can be written in parts, each handed on (to be queued)
as soon as it is committed while the next is written, so that the database's work and the
broker's overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from sqlalchemy import Connection, Table, case, func, insert, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pixpipe.csv_input import ParsedCsv
from pixpipe.db.models import ImageRecord, ProductRecord, RequestRecord
from pixpipe.db.transactions import TransactionRunner
from pixpipe.domain import ImageState, RequestOptions, RequestState
from pixpipe.job_batch import JobBatch, uuid4_hexes

_requests: Table = RequestRecord.__table__  # type: ignore[assignment]
_products: Table = ProductRecord.__table__  # type: ignore[assignment]
_images: Table = ImageRecord.__table__  # type: ignore[assignment]

_PRODUCT_COLUMNS = ("id", "request_id", "serial_number", "product_name", "line", "cells")
_IMAGE_COLUMNS = ("id", "request_id", "product_id", "serial_number", "position", "input_url",
                  "status", "attempts", "updated_at")
# Images per part on PostgreSQL: the last part is queued after everything else is done, so
# small, but each part is a commit. 100,000 images in parts of 5,000 / 10,000 / 20,000 (gRPC
# upload, median of 6): 3.0 / 2.8 / 3.4 s.
PART_IMAGES = 10_000


def _insert_sql(table: Table, columns: tuple[str, ...]) -> str:
    # Not injectable: table and column names are this module's constants; values stay "?".
    return (f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608
            f"VALUES ({', '.join('?' * len(columns))})")


_INSERT_PRODUCTS = _insert_sql(_products, _PRODUCT_COLUMNS)
_INSERT_IMAGES = _insert_sql(_images, _IMAGE_COLUMNS)
# Not injectable either: the table name is a constant, the count a bound parameter.
_RESERVE_PRODUCT_IDS = (
    f"SELECT array_agg(nextval(pg_get_serial_sequence('{_products.name}', 'id'))) "  # noqa: S608
    "FROM generate_series(1, $1)")
_OPEN_IMAGE = or_(_images.c.status == ImageState.PENDING.value,
                  _images.c.status == ImageState.PROCESSING.value)
_IMAGE_COUNT = (select(func.count()).select_from(_images)
                .where(_images.c.request_id == _requests.c.id).scalar_subquery())


class RequestNotQueued(Exception):
    """Recording or queueing stopped after part of the request was committed (and perhaps
    queued): ``request_id`` must be failed with ``fail_unqueued``."""

    def __init__(self, request_id: str, *, queueing_failed: bool) -> None:
        super().__init__(request_id)
        self.request_id = request_id
        self.queueing_failed = queueing_failed


class RequestWriter:
    """Writes requests and their products and images; see the module's docstring."""

    def __init__(self, engine: AsyncEngine, writes: TransactionRunner) -> None:
        self._engine = engine
        self._writes = writes

    async def record(self, parsed: ParsedCsv, *, options: RequestOptions,
                     webhook_url: str | None, file_name: str,
                     committed: Callable[[JobBatch], Coroutine[Any, Any, None]] | None = None,
                     api_key_id: str | None = None, express: bool = False) -> JobBatch:
        """Record a validated upload with its products and images; return its jobs.

        Without ``committed``, one transaction. With it, the request's row and every product
        are written with the first PART_IMAGES images or so, the rest in further transactions
        of as many, and each part's jobs are handed to ``committed`` once the part is
        committed, while the next part is written (one call at a time, in order). If a part
        after the first or a ``committed`` call fails, nothing more is written and
        RequestNotQueued is raised from the error.
        """
        now = datetime.now(UTC)
        request = {
            "id": str(uuid.uuid4()), "status": RequestState.PENDING.value,
            "file_name": file_name, "webhook_url": webhook_url,
            "options": options.model_dump(exclude_none=True), "header": list(parsed.header),
            "total": parsed.image_count, "completed": 0, "failed": 0, "version": 1,
            "created_at": now, "updated_at": now, "api_key_id": api_key_id,
        }
        # Sorted, the ids of a request are inserted in index order: ~20% less CPU on SQLite.
        rows = _Rows(request, parsed, sorted(uuid4_hexes(parsed.image_count)), options,
                     express=express)
        if committed is None:
            await self._write(rows, rows.whole())
            return rows.jobs(rows.whole())
        handing_on: asyncio.Task[None] | None = None
        try:
            for part in rows.parts(self._images_per_part(parsed.image_count)):
                try:
                    await self._write(rows, part)
                except Exception as error:
                    if part.first:
                        raise
                    raise RequestNotQueued(rows.request_id, queueing_failed=False) from error
                try:
                    if handing_on is not None:
                        await handing_on
                except Exception as error:
                    raise RequestNotQueued(rows.request_id, queueing_failed=True) from error
                handing_on = asyncio.create_task(committed(rows.jobs(part)))
            try:
                if handing_on is not None:
                    await handing_on
            except Exception as error:
                raise RequestNotQueued(rows.request_id, queueing_failed=True) from error
        finally:
            if handing_on is not None and not handing_on.done():
                handing_on.cancel()
                with contextlib.suppress(BaseException):
                    await handing_on
        return rows.jobs(rows.whole())

    def _images_per_part(self, images: int) -> int:
        if self._engine.dialect.name == "postgresql":
            return PART_IMAGES
        # SQLite writes run in a thread that needs the GIL for every row, and the event loop,
        # busy queueing the part before, holds it most of the time: written that way a part
        # of 20,000 images took 0.9 s instead of 0.15 s. So one part, queued once written.
        return max(images, 1)

    async def _write(self, rows: _Rows, part: _Part) -> None:
        if self._engine.dialect.name == "postgresql":
            async with self._engine.begin() as connection:
                await _copy(connection, rows, part)
        else:
            await self._writes.run(lambda connection: _insert(connection, rows, part))

    async def fail_unqueued(self, request_id: str, reason: str) -> None:
        """Fail every open image of a request whose jobs could not all be queued; its total
        becomes the images actually recorded (fewer when recording stopped part way)."""
        now = datetime.now(UTC)

        def work(connection: Connection) -> None:
            result = connection.execute(
                update(_images).where(_images.c.request_id == request_id, _OPEN_IMAGE)
                .values(status=ImageState.FAILED.value, error=reason, updated_at=now))
            connection.execute(
                update(_requests).where(_requests.c.id == request_id)
                .values(failed=_requests.c.failed + result.rowcount, total=_IMAGE_COUNT,
                        error=reason, version=_requests.c.version + 1, updated_at=now,
                        completed_at=now,
                        status=case((_requests.c.completed > 0, RequestState.COMPLETED.value),
                                    else_=RequestState.FAILED.value)))

        await self._writes.run(work)


@dataclass(frozen=True)
class _Part:
    """Products ``[first_row, end_row)`` of the file, and their images from ``first_image``."""

    first_row: int
    end_row: int
    first_image: int
    end_image: int

    @property
    def first(self) -> bool:
        return self.first_row == 0


class _Rows:
    """The rows of one request, produced part by part as the driver consumes them."""

    def __init__(self, request: dict[str, Any], parsed: ParsedCsv, image_ids: list[str],
                 options: RequestOptions, *, express: bool = False) -> None:
        self.request = request
        self.express = express
        self.request_id: str = request["id"]
        self.parsed = parsed
        self.image_ids = image_ids
        self.options = options
        self.urls = [url for row in parsed.rows for url in row.image_urls]
        # Where each product's images start among the request's images.
        self.image_starts = [0, *accumulate(len(row.image_urls) for row in parsed.rows)]
        self.product_ids: list[int] = []  # set while the first part is written

    def whole(self) -> _Part:
        return _Part(0, len(self.parsed.rows), 0, len(self.image_ids))

    def parts(self, images_per_part: int) -> list[_Part]:
        """Whole products, about ``images_per_part`` images each."""
        parts: list[_Part] = []
        first_row, starts, last_row = 0, self.image_starts, len(self.parsed.rows)
        for end_row in range(1, last_row + 1):
            if starts[end_row] - starts[first_row] >= images_per_part or end_row == last_row:
                parts.append(_Part(first_row, end_row, starts[first_row], starts[end_row]))
                first_row = end_row
        return parts or [self.whole()]

    def jobs(self, part: _Part) -> JobBatch:
        span = slice(part.first_image, part.end_image)
        return JobBatch(self.request_id, self.options, self.image_ids[span], self.urls[span],
                        tenant=self.request["api_key_id"] or "", express=self.express)

    def products(self, cells_json: Callable[[Any], Any]) -> Iterator[tuple[Any, ...]]:
        request_id = self.request_id
        for row, product_id in zip(self.parsed.rows, self.product_ids, strict=True):
            yield (product_id, request_id, row.serial_number, row.product_name, row.line,
                   cells_json(list(row.cells)))

    def images(self, part: _Part, updated_at: Any) -> Iterator[tuple[Any, ...]]:
        request_id, pending = self.request_id, ImageState.PENDING.value
        image_ids = iter(self.image_ids[part.first_image:part.end_image])
        for index in range(part.first_row, part.end_row):
            row, product_id = self.parsed.rows[index], self.product_ids[index]
            serial = row.serial_number
            for position, url in enumerate(row.image_urls):
                yield (next(image_ids), request_id, product_id, serial, position, url,
                       pending, 0, updated_at)


def _bind(table: Table, column: str, dialect: Dialect) -> Callable[[Any], Any]:
    """How SQLAlchemy would turn a value of ``column`` into what the driver takes."""
    process = table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
    return process or (lambda value: value)


def _insert(connection: Connection, rows: _Rows, part: _Part) -> None:
    dialect = connection.dialect
    # The driver's own cursor: it takes the rows as an iterator, so they are never all built.
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if part.first:
            # The request's row first: the transaction takes SQLite's write lock at once, so
            # the product ids read next stay this transaction's to use.
            connection.execute(insert(_requests).values(rows.request))
            first = connection.execute(
                select(func.coalesce(func.max(_products.c.id), 0))).scalar_one() + 1
            rows.product_ids = list(range(first, first + len(rows.parsed.rows)))
            cursor.executemany(_INSERT_PRODUCTS, rows.products(_bind(_products, "cells",
                                                                     dialect)))
        cursor.executemany(_INSERT_IMAGES, rows.images(
            part, _bind(_images, "updated_at", dialect)(rows.request["updated_at"])))
    finally:
        cursor.close()


async def _copy(connection: AsyncConnection, rows: _Rows, part: _Part) -> None:
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    if part.first:
        # Through SQLAlchemy first: that begins the transaction the COPYs below then join.
        await connection.execute(insert(_requests).values(rows.request))
        reserved: list[int] = await driver.fetchval(_RESERVE_PRODUCT_IDS,
                                                    len(rows.parsed.rows))
        rows.product_ids = sorted(reserved)  # ascending in file order: the output CSV's order
        await driver.copy_records_to_table(
            _products.name, columns=_PRODUCT_COLUMNS,
            records=rows.products(_bind(_products, "cells", connection.dialect)))
    else:
        await connection.execute(select(1))  # begin the transaction
    await driver.copy_records_to_table(_images.name, columns=_IMAGE_COLUMNS,
                                       records=rows.images(part, rows.request["updated_at"]))
