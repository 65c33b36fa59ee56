"""Delivers completion webhooks: signed POSTs, retried on a schedule, leased per notifier."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx

from pixpipe import tracing
from pixpipe.db.api_keys import ApiKeyStore
from pixpipe.db.repository import Repository
from pixpipe.db.webhooks import AttemptResult, LeasedDelivery, WebhookRepository
from pixpipe.metrics import NotifierMetrics
from pixpipe.net_policy import AddressNotAllowed
from pixpipe.retry import retry_delay
from pixpipe.safe_transport import guarded_transport
from pixpipe.settings import FetchSettings, WebhookSettings
from pixpipe.webhook_signature import signed_headers
from pixpipe_services.notifier.webhook_body import webhook_body

log = logging.getLogger(__name__)

_MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
_MAX_CONCURRENT_DELIVERIES = 16
# Receivers answer with a status; their bodies are read up to this much and dropped.
MAX_RESPONSE_BYTES = 64 * 1024


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER_SECONDS)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_SECONDS)


class WebhookSender:
    """One pooled client whose connections obey the same network policy as image fetches."""

    def __init__(self, webhooks: WebhookSettings, fetch: FetchSettings) -> None:
        if not webhooks.secret:
            raise ValueError("webhooks cannot be signed without PIXPIPE_WEBHOOK_SECRET")
        self._secret = webhooks.secret
        self._client = httpx.AsyncClient(
            transport=guarded_transport(allow_private=fetch.allow_private_networks),
            timeout=httpx.Timeout(webhooks.timeout_seconds),
            follow_redirects=False, trust_env=False,
            headers={"User-Agent": fetch.user_agent})
        self._timeout = webhooks.timeout_seconds

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, url: str, message_id: str, body: bytes, *, secret: str | None = None,
                   ) -> tuple[AttemptResult, float | None, bool]:
        """POST once, signed with ``secret`` (an API key's) or else the install's; returns the
        result, any Retry-After, and whether a retry makes sense."""
        attempted_at = datetime.now(UTC)
        started = time.monotonic()

        def result(status: int | None = None, error: str | None = None) -> AttemptResult:
            return AttemptResult(attempted_at=attempted_at,
                                 duration_ms=int((time.monotonic() - started) * 1000),
                                 status_code=status, error=error)

        try:
            async with asyncio.timeout(self._timeout):
                status, retry_after_header = await self._send(url, message_id, body,
                                                              secret or self._secret)
        except AddressNotAllowed:
            return result(error="receiver address not allowed"), None, False
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError, ValueError) as error:
            # A URL no attempt can ever reach: recorded once, then the delivery has failed.
            return result(error=f"invalid webhook URL: {type(error).__name__}"), None, False
        except (TimeoutError, httpx.TimeoutException):
            return result(error=f"timed out after {self._timeout:g} s"), None, True
        except (httpx.HTTPError, OSError) as error:
            return result(error=f"could not connect: {type(error).__name__}"), None, True
        retry_after = parse_retry_after(retry_after_header)
        succeeded = 200 <= status < 300
        outcome = result(status=status, error=None if succeeded else f"HTTP {status}")
        return outcome, retry_after, True

    async def _send(self, url: str, message_id: str, body: bytes,
                    secret: str) -> tuple[int, str | None]:
        """POST and read at most MAX_RESPONSE_BYTES of the answer: a receiver cannot make the
        notifier hold an unbounded body; what is past the limit is dropped with the connection."""
        async with self._client.stream(
                "POST", url, content=body,
                headers=signed_headers(secret, message_id, body)) as response:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received >= MAX_RESPONSE_BYTES:
                    break
            return response.status_code, response.headers.get("retry-after")


class WebhookDispatcher:
    """Finds due deliveries in the database and sends them; any number may run at once."""

    def __init__(self, settings: WebhookSettings, repository: Repository,
                 webhooks: WebhookRepository, sender: WebhookSender,
                 metrics: NotifierMetrics | None = None, *, public_base_url: str,
                 keys: ApiKeyStore | None = None) -> None:
        self._metrics = metrics or NotifierMetrics()
        self._keys = keys
        self._settings = settings
        self._public_base_url = public_base_url
        self._repository = repository
        self._webhooks = webhooks
        self._sender = sender
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # The trace of each request whose completion was noticed here, for its delivery.
        self._traces = tracing.RecentContexts()

    def wake(self, request_id: str | None = None) -> None:
        """Look for due deliveries now (``request_id`` just finished) instead of at the next
        poll; that request's delivery goes on in the trace current here."""
        if request_id is not None:
            self._traces.note(request_id, tracing.current_context())
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self._start_due()
                except Exception:
                    log.warning("looking for due webhooks failed", exc_info=True)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first_of(stop, self._wake),
                                           timeout=self._settings.poll_seconds)
        finally:
            if self._in_flight:
                await asyncio.wait(self._in_flight.values(),
                                   timeout=self._settings.timeout_seconds + 1)

    async def _start_due(self) -> None:
        for delivery_id in await self._webhooks.due():
            busy = len(self._in_flight) >= _MAX_CONCURRENT_DELIVERIES
            if busy or delivery_id in self._in_flight:
                continue
            task = asyncio.create_task(self._deliver(delivery_id))
            self._in_flight[delivery_id] = task
            task.add_done_callback(functools.partial(self._forget, delivery_id))

    def _forget(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery_id, None)

    async def _deliver(self, delivery_id: str) -> None:
        try:
            leased = await self._webhooks.lease(delivery_id, owner=self._owner,
                                                seconds=self._settings.lease_seconds)
            if leased is None:
                return  # another notifier has it, or it is already settled
            with tracing.span("webhook delivery", kind="client",
                              parent=self._traces.get(leased.request_id),
                              attributes={"pixpipe.request_id": leased.request_id,
                                          "pixpipe.webhook.attempt": leased.attempts + 1},
                              ) as span:
                body = await self._payload(leased)
                # A key's requests are signed with that key's own secret.
                secret = (await self._keys.webhook_secret_of_request(leased.request_id)
                          if self._keys is not None else None)
                result, retry_after, retryable = await self._sender.post(
                    leased.url, leased.id, body, secret=secret)
                retry_at = None
                if not result.succeeded and retryable:
                    retry_at = self._retry_at(leased.attempts + 1, retry_after)
                outcome = ("delivered" if result.succeeded else
                           "retrying" if retry_at is not None else "gave up")
                if span is not None:
                    span.set_attributes({"pixpipe.outcome": outcome,
                                         "http.response.status_code": result.status_code or 0})
                self._metrics.webhook_attempts.labels(outcome).inc()
                recorded = await self._webhooks.record_attempt(
                    leased.id, owner=self._owner, result=result, retry_at=retry_at)
            log.info("webhook %s attempt %d: %s%s", leased.id, leased.attempts + 1,
                     result.status_code or result.error,
                     "" if recorded else " (lease lost; not recorded)")
        except Exception:
            log.exception("delivering webhook %s failed", delivery_id)

    def _retry_at(self, attempts_made: int, retry_after: float | None) -> datetime | None:
        schedule = self._settings.retry_schedule
        if attempts_made > len(schedule):
            return None
        delay = retry_delay(schedule, attempts_made) if retry_after is None else retry_after
        return datetime.now(UTC) + timedelta(seconds=delay)

    async def _payload(self, leased: LeasedDelivery) -> bytes:
        """The status JSON, fixed at the first attempt so every retry sends the same body."""
        if leased.payload is not None:
            return leased.payload.encode()
        payload = await webhook_body(self._repository, leased.request_id,
                                     public_base_url=self._public_base_url)
        if payload is None:
            raise LookupError(f"request {leased.request_id} vanished")
        await self._webhooks.save_payload(leased.id, payload)
        return payload.encode()


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
