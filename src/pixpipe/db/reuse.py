"""Queries of content-addressed reuse: outputs by content key, source validators by URL, and
claims on the encodes under way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, DateTime, Table, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from pixpipe.db.models import ContentClaim, ContentOutput, SourceValidator
from pixpipe.db.transactions import TransactionRunner
from pixpipe.domain import Effort, ImageSuccess

_outputs: Table = ContentOutput.__table__  # type: ignore[assignment]
_validators: Table = SourceValidator.__table__  # type: ignore[assignment]
_claims: Table = ContentClaim.__table__  # type: ignore[assignment]
_OUTPUT_COLUMNS = (_outputs.c.request_id, _outputs.c.output_path, _outputs.c.bytes_in,
                   _outputs.c.bytes_out, _outputs.c.width, _outputs.c.height,
                   _outputs.c.quality_used, _outputs.c.encoder, _outputs.c.effort,
                   _outputs.c.score)
# Built once: workers run these for every image.
_FIND = select(*_OUTPUT_COLUMNS).where(_outputs.c.content_key == bindparam("p_key"))
_FIND_SOURCE = (select(_validators.c.content_key, _validators.c.etag,
                       _validators.c.last_modified, *_OUTPUT_COLUMNS)
                .join(_outputs, _outputs.c.content_key == _validators.c.content_key)
                .where(_validators.c.lookup_key == bindparam("p_lookup_key")))
_RELEASE = delete(_claims).where(_claims.c.content_key == bindparam("p_key"))
_REFRESH = (update(_claims).where(_claims.c.content_key == bindparam("p_key"))
            .values(claimed_at=bindparam("p_now")))
_FORGET = delete(_outputs).where(_outputs.c.content_key == bindparam("p_key"))


@dataclass(frozen=True)
class KnownOutput:
    """A stored output and the request that owns its object."""

    output: ImageSuccess
    request_id: str


@dataclass(frozen=True)
class SourceAnswer:
    """What a source URL answered last time: its validators and the content it carried."""

    lookup_key: str
    content_key: str
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class EarlierSource:
    answer: SourceAnswer
    known: KnownOutput


class ReuseIndex:
    """Reads run on the engine's pool; writes join the process's TransactionRunner (the
    Repository's), so they share its connection and group commits."""

    def __init__(self, engine: AsyncEngine, writes: TransactionRunner) -> None:
        self._engine = engine
        self._writes = writes

    async def find(self, content_key: str) -> KnownOutput | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(_FIND, {"p_key": content_key})).one_or_none()
        return None if row is None else _known(row)

    async def find_source(self, lookup_key: str) -> EarlierSource | None:
        """The URL's last answer, if it had validators and its output is still stored."""
        async with self._engine.connect() as connection:
            row = (await connection.execute(_FIND_SOURCE, {"p_lookup_key": lookup_key})
                   ).one_or_none()
        if row is None:
            return None
        answer = SourceAnswer(lookup_key=lookup_key, content_key=row.content_key,
                              etag=row.etag, last_modified=row.last_modified)
        return EarlierSource(answer=answer, known=_known(row))

    async def claim(self, content_key: str, *, stale_after: timedelta) -> bool:
        """Whether this worker may encode ``content_key``: no one else claimed it, or their
        claim is older than ``stale_after``."""

        def work(connection: Connection) -> bool:
            now = datetime.now(UTC)
            return connection.execute(_statements(connection.dialect.name).claim, {
                "p_content_key": content_key, "p_claimed_at": now,
                "p_stale": now - stale_after}).first() is not None

        return await self._writes.run(work)

    async def refresh_claim(self, content_key: str) -> None:
        """Show that the claim's worker is alive: its claim stays fresh while it encodes."""
        await self._writes.run(lambda connection: connection.execute(
            _REFRESH, {"p_key": content_key, "p_now": datetime.now(UTC)}))

    async def release(self, content_key: str) -> None:
        await self._writes.run(lambda connection: connection.execute(
            _RELEASE, {"p_key": content_key}))

    async def record(self, content_key: str, request_id: str, output: ImageSuccess | None,
                     source: SourceAnswer | None = None) -> None:
        """Point ``content_key`` at ``output`` (the newest copy, owned by ``request_id``, so
        the entry lives as long as its newest user) and release a claim on it; remember the
        source's validators. ``output`` None: the validators alone."""

        def work(connection: Connection) -> None:
            now = datetime.now(UTC)
            statements = _statements(connection.dialect.name)
            if output is not None:
                connection.execute(statements.upsert_output, {
                    "p_content_key": content_key, "p_request_id": request_id,
                    "p_output_path": output.output_path, "p_bytes_in": output.bytes_in,
                    "p_bytes_out": output.bytes_out, "p_width": output.width,
                    "p_height": output.height, "p_quality_used": output.quality_used,
                    "p_encoder": output.encoder, "p_effort": output.effort,
                    "p_score": output.score, "p_created_at": now})
                connection.execute(_RELEASE, {"p_key": content_key})
            if source is not None:
                connection.execute(statements.upsert_validator, {
                    "p_lookup_key": source.lookup_key, "p_content_key": source.content_key,
                    "p_etag": source.etag, "p_last_modified": source.last_modified,
                    "p_request_id": request_id, "p_updated_at": now})

        await self._writes.run(work)

    async def forget(self, content_key: str) -> None:
        """The entry's object is gone (deleted by hand, a lost bucket): stop offering it."""
        await self._writes.run(lambda connection: connection.execute(
            _FORGET, {"p_key": content_key}))


@dataclass(frozen=True)
class _Statements:
    upsert_output: Insert
    upsert_validator: Insert
    claim: Insert


@cache
def _statements(dialect_name: str) -> _Statements:
    """The upserts, in the dialect's own INSERT … ON CONFLICT (SQLite and PostgreSQL)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    claim = dialect.insert(_claims).values(content_key=bindparam("p_content_key"),
                                           claimed_at=bindparam("p_claimed_at"))
    return _Statements(
        upsert_output=_upsert(dialect, _outputs, "content_key"),
        upsert_validator=_upsert(dialect, _validators, "lookup_key"),
        claim=claim.on_conflict_do_update(
            index_elements=["content_key"], set_={"claimed_at": claim.excluded.claimed_at},
            where=_claims.c.claimed_at < bindparam("p_stale", type_=DateTime(timezone=True)),
        ).returning(_claims.c.content_key))


def _upsert(dialect: Any, table: Table, key: str) -> Insert:
    names = [column.name for column in table.columns]
    statement = dialect.insert(table).values({name: bindparam(f"p_{name}") for name in names})
    return cast(Insert, statement.on_conflict_do_update(
        index_elements=[key],
        set_={name: statement.excluded[name] for name in names if name != key}))


def _known(row: Any) -> KnownOutput:
    return KnownOutput(request_id=row.request_id, output=ImageSuccess(
        output_path=row.output_path, bytes_in=row.bytes_in, bytes_out=row.bytes_out,
        width=row.width, height=row.height, quality_used=row.quality_used,
        encoder=row.encoder, effort=cast(Effort | None, row.effort), score=row.score))
