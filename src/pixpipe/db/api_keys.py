"""API keys: made, listed and revoked by the operator; looked up by the hash of a token."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pixpipe.db.models import ApiKeyRecord, RequestRecord
from pixpipe.domain import RequestState
from pixpipe.webhook_signature import new_webhook_secret

TOKEN_PREFIX = "pxp_"  # noqa: S105  (what every token starts with, not a token)
# Shown in listings: enough to tell keys apart, far too little to guess the rest.
_SHOWN_CHARACTERS = 12
_OPEN_STATES = (RequestState.PENDING.value, RequestState.PROCESSING.value)


def token_digest(token: str) -> str:
    """SHA-256, not a slow password hash: a token is 256 random bits, not a guessable word."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    token_prefix: str
    webhook_secret: str
    max_concurrent_requests: int | None
    max_images_per_hour: int | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class NewApiKey:
    """A key just made, with the only copy of its token."""

    key: ApiKey
    token: str


@dataclass(frozen=True)
class KeyUsage:
    """What a key has under way: its open requests and the images it sent in the last hour."""

    open_requests: int
    images_last_hour: int
    # When the oldest upload counted in the hour leaves it (None: none counted).
    hour_frees_at: datetime | None


class ApiKeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, name: str, *, max_concurrent_requests: int | None = None,
                     max_images_per_hour: int | None = None) -> NewApiKey:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=str(uuid.uuid4()), name=name, token_prefix=token[:_SHOWN_CHARACTERS],
                     webhook_secret=new_webhook_secret(),
                     max_concurrent_requests=max_concurrent_requests,
                     max_images_per_hour=max_images_per_hour, created_at=datetime.now(UTC),
                     revoked_at=None)
        async with self._engine.begin() as connection:
            await connection.execute(insert(ApiKeyRecord).values(
                id=key.id, name=key.name, token_prefix=key.token_prefix,
                token_sha256=token_digest(token), webhook_secret=key.webhook_secret,
                max_concurrent_requests=max_concurrent_requests,
                max_images_per_hour=max_images_per_hour, created_at=key.created_at))
        return NewApiKey(key=key, token=token)

    async def list(self) -> list[ApiKey]:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(
                select(ApiKeyRecord.__table__).order_by(ApiKeyRecord.created_at))).all()
        return [_key(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        """False when no such key is active (unknown, or revoked already)."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(ApiKeyRecord).where(ApiKeyRecord.id == key_id,
                                           ApiKeyRecord.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC)))
        return bool(result.rowcount)

    async def find_active(self, token: str) -> ApiKey | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(
                select(ApiKeyRecord.__table__).where(
                    ApiKeyRecord.token_sha256 == token_digest(token),
                    ApiKeyRecord.revoked_at.is_(None)))).one_or_none()
        return None if row is None else _key(row)

    async def webhook_secret_of_request(self, request_id: str) -> str | None:
        """The signing secret of the key that uploaded the request; None for no key."""
        async with self._engine.connect() as connection:
            return await connection.scalar(
                select(ApiKeyRecord.webhook_secret)
                .join(RequestRecord, RequestRecord.api_key_id == ApiKeyRecord.id)
                .where(RequestRecord.id == request_id))

    async def usage(self, key_id: str, *, now: datetime | None = None) -> KeyUsage:
        now = now or datetime.now(UTC)
        hour_ago = now - timedelta(hours=1)
        of_key = RequestRecord.api_key_id == key_id
        async with self._engine.connect() as connection:
            open_requests = await connection.scalar(
                select(func.count()).where(of_key, RequestRecord.status.in_(_OPEN_STATES)))
            images, oldest = (await connection.execute(
                select(func.coalesce(func.sum(RequestRecord.total), 0),
                       func.min(RequestRecord.created_at))
                .where(of_key, RequestRecord.created_at > hour_ago))).one()
        frees_at = None if oldest is None else _aware(oldest) + timedelta(hours=1)
        return KeyUsage(open_requests=int(open_requests or 0), images_last_hour=int(images),
                        hour_frees_at=frees_at)


def _key(row: Any) -> ApiKey:
    return ApiKey(id=row.id, name=row.name, token_prefix=row.token_prefix,
                  webhook_secret=row.webhook_secret,
                  max_concurrent_requests=row.max_concurrent_requests,
                  max_images_per_hour=row.max_images_per_hour,
                  created_at=_aware(row.created_at),
                  revoked_at=None if row.revoked_at is None else _aware(row.revoked_at))


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for the UTC values it was given.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
