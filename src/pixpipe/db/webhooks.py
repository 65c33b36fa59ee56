"""Queries for webhook deliveries: finding due ones, leasing them, recording attempts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixpipe.db.models import WebhookAttempt, WebhookDelivery
from pixpipe.db.repository import utcnow


@dataclass(frozen=True)
class LeasedDelivery:
    id: str
    request_id: str
    url: str
    payload: str | None
    attempts: int


@dataclass(frozen=True)
class AttemptResult:
    attempted_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def due(self, *, limit: int = 50) -> Sequence[str]:
        now = utcnow()
        async with self._sessions() as session:
            return (await session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.state == "pending",
                       WebhookDelivery.next_attempt_at <= now,
                       or_(WebhookDelivery.locked_until.is_(None),
                           WebhookDelivery.locked_until < now))
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )).all()

    async def backlog(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(
                select(func.count()).select_from(WebhookDelivery)
                .where(WebhookDelivery.state == "pending")) or 0)

    async def lease(self, delivery_id: str, *, owner: str, seconds: float,
                    ) -> LeasedDelivery | None:
        """Take the delivery for ``seconds``; None when another notifier holds it or it is done.

        The conditional update is the lock: of two notifiers racing, exactly one updates a row.
        """
        now = utcnow()
        async with self._sessions.begin() as session:
            leased = await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == "pending",
                       WebhookDelivery.next_attempt_at <= now,
                       or_(WebhookDelivery.locked_until.is_(None),
                           WebhookDelivery.locked_until < now))
                .values(locked_by=owner, locked_until=now + timedelta(seconds=seconds))
                .returning(WebhookDelivery.id, WebhookDelivery.request_id, WebhookDelivery.url,
                           WebhookDelivery.payload, WebhookDelivery.attempts)
            )
            row = leased.one_or_none()
        if row is None:
            return None
        return LeasedDelivery(id=row.id, request_id=row.request_id, url=row.url,
                              payload=row.payload, attempts=row.attempts)

    async def save_payload(self, delivery_id: str, payload: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                              WebhookDelivery.payload.is_(None))
                .values(payload=payload))

    async def record_attempt(self, delivery_id: str, *, owner: str, result: AttemptResult,
                             retry_at: datetime | None) -> bool:
        """Record one POST; ``retry_at`` None after a failure means give up.

        Returns False when the lease was lost meanwhile (another notifier took over), in
        which case nothing about the delivery's state changes.
        """
        if result.succeeded:
            values: dict[str, object] = {"state": "delivered", "delivered_at": utcnow()}
        elif retry_at is None:
            values = {"state": "failed"}
        else:
            values = {"next_attempt_at": retry_at}
        async with self._sessions.begin() as session:
            updated = await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.locked_by == owner,
                       WebhookDelivery.state == "pending")
                .values(attempts=WebhookDelivery.attempts + 1,
                        last_status_code=result.status_code, last_error=result.error,
                        locked_by=None, locked_until=None, **values)
                .returning(WebhookDelivery.id))
            if updated.one_or_none() is None:
                return False
            session.add(WebhookAttempt(
                delivery_id=delivery_id, attempted_at=result.attempted_at,
                duration_ms=result.duration_ms, status_code=result.status_code,
                error=result.error, notifier=owner))
        return True

    async def attempts(self, delivery_id: str) -> Sequence[WebhookAttempt]:
        async with self._sessions() as session:
            return (await session.scalars(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id))).all()

    async def delivery_for_request(self, request_id: str) -> WebhookDelivery | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(WebhookDelivery).where(WebhookDelivery.request_id == request_id))
