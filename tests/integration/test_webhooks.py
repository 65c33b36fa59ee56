"""Webhook delivery against real HTTP receivers, a real database and real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import standardwebhooks

from pixpipe.client import verify
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.models import WebhookAttempt
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageSuccess, RequestOptions
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2, status_pb2_grpc
from pixpipe_services.notifier.main import Notifier
from tests.support.webhook_receiver import HANG, WebhookReceiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CSV = b"S. No.,Product Name,Input Image Urls\n1,Lamp,https://img.example/a.jpg\n"


def webhook_settings(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {"webhook_secret": SECRET, "webhook_retry_schedule": [0.2] * 5,
                              "webhook_poll_seconds": 0.1, "webhook_timeout_seconds": 2.0,
                              "status_port": 0}
    values.update(overrides)
    return make_settings(**values)


async def finished_request(repository: Repository, webhook_url: str) -> str:
    """A request whose only image completed: its completion webhook is now due."""
    request_id, jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=webhook_url,
        file_name="hooked.csv")
    await repository.start_image(jobs[0].image_id)
    change = await repository.finish_image(jobs[0].image_id, ImageSuccess(
        output_path=f"{request_id}/x.jpg", bytes_in=10, bytes_out=5, width=1, height=1))
    assert change is not None and change.finished_request
    return request_id


@contextlib.asynccontextmanager
async def running_notifier(settings: Settings) -> AsyncIterator[Notifier]:
    notifier = Notifier(settings)
    await notifier.start()
    try:
        yield notifier
    finally:
        await notifier.stop(0)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def recorded_attempts(notifier: Notifier, request_id: str) -> Sequence[WebhookAttempt]:
    delivery = await notifier.webhooks.delivery_for_request(request_id)
    assert delivery is not None, "no webhook delivery was scheduled"
    return await notifier.webhooks.attempts(delivery.id)


async def delivery_state(repository: Repository, request_id: str) -> tuple[str, int]:
    view = await repository.get_request(request_id)
    assert view is not None and view.webhook is not None
    return view.webhook.state, view.webhook.attempts


async def test_failures_are_retried_and_every_attempt_recorded(
        make_settings: Callable[..., Settings], repository: Repository) -> None:
    settings = webhook_settings(make_settings)
    with WebhookReceiver([500, 500]) as receiver:
        async with running_notifier(settings) as notifier:
            request_id = await finished_request(repository, receiver.url())
            await asyncio.to_thread(receiver.wait_for_success)
            await eventually(lambda: _state_is(repository, request_id, "delivered"))
            attempts = await recorded_attempts(notifier, request_id)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
                status = (await status_pb2_grpc.StatusServiceStub(channel).GetStatus(
                    status_pb2.GetStatusRequest(request_id=request_id), timeout=5)).status
    assert [post.answered for post in receiver.posts] == [500, 500, 200]
    assert [attempt.status_code for attempt in attempts] == [500, 500, 200]
    assert all(attempt.duration_ms >= 0 and attempt.attempted_at for attempt in attempts)
    assert len({post.headers["webhook-id"] for post in receiver.posts}) == 1
    assert len({post.body for post in receiver.posts}) == 1, "retries must resend the same body"
    success = receiver.successes()[0]
    # The independent reference implementation accepts our signature, and so does ours.
    standardwebhooks.Webhook(SECRET).verify(success.body, dict(success.headers))
    verify(success.headers, success.body, SECRET)
    body = json.loads(success.body)
    assert body["request_id"] == request_id and body["status"] == "completed"
    assert body["images"][0]["status"] == "completed"
    assert (status.webhook.state, status.webhook.attempts,
            status.webhook.last_status_code) == ("delivered", 3, 200)


async def _state_is(repository: Repository, request_id: str, state: str) -> bool:
    return (await delivery_state(repository, request_id))[0] == state


async def test_a_receiver_that_is_down_gets_it_when_it_comes_up(
        make_settings: Callable[..., Settings], repository: Repository) -> None:
    receiver = WebhookReceiver()  # not started: connections are refused
    async with running_notifier(webhook_settings(make_settings)):
        request_id = await finished_request(repository, receiver.url())
        await eventually(lambda: _attempts_at_least(repository, request_id, 2))
        with receiver:
            await asyncio.to_thread(receiver.wait_for_success)
            await eventually(lambda: _state_is(repository, request_id, "delivered"))
    view = await repository.get_request(request_id)
    assert view is not None and view.webhook is not None
    assert view.webhook.attempts >= 3 and view.webhook.last_status_code == 200
    assert len(receiver.successes()) == 1


async def _attempts_at_least(repository: Repository, request_id: str, count: int) -> bool:
    return (await delivery_state(repository, request_id))[1] >= count


async def test_a_hanging_receiver_times_out_and_is_retried(
        make_settings: Callable[..., Settings], repository: Repository) -> None:
    settings = webhook_settings(make_settings, webhook_timeout_seconds=0.5)
    with WebhookReceiver([HANG]) as receiver:
        async with running_notifier(settings) as notifier:
            request_id = await finished_request(repository, receiver.url())
            await asyncio.to_thread(receiver.wait_for_success)
            await eventually(lambda: _state_is(repository, request_id, "delivered"))
            attempts = await recorded_attempts(notifier, request_id)
    assert [(a.status_code, a.error) for a in attempts] == [
        (None, "timed out after 0.5 s"), (200, None)]


async def test_retry_after_is_honoured(make_settings: Callable[..., Settings],
                                       repository: Repository) -> None:
    # The schedule alone would wait an hour; the receiver asks for one second.
    settings = webhook_settings(make_settings, webhook_retry_schedule=[3600.0])
    with WebhookReceiver([503], retry_after="1") as receiver:
        async with running_notifier(settings):
            request_id = await finished_request(repository, receiver.url())
            started = time.monotonic()
            await asyncio.to_thread(receiver.wait_for_success, 15.0)
            waited = time.monotonic() - started
    assert [post.answered for post in receiver.posts] == [503, 200]
    assert 0.9 <= waited < 15
    assert (await delivery_state(repository, request_id))[1] == 2


async def test_private_receivers_are_refused_unless_allowed(
        make_settings: Callable[..., Settings], repository: Repository) -> None:
    settings = webhook_settings(make_settings, allow_private_networks=False)
    with WebhookReceiver() as receiver:
        async with running_notifier(settings):
            request_id = await finished_request(repository, receiver.url())
            await eventually(lambda: _state_is(repository, request_id, "failed"))
    view = await repository.get_request(request_id)
    assert view is not None and view.webhook is not None
    assert view.webhook.last_error == "receiver address not allowed"
    assert view.webhook.attempts == 1
    assert receiver.posts == []


async def test_two_notifier_replicas_deliver_each_event_once(
        make_settings: Callable[..., Settings], repository: Repository) -> None:
    settings = webhook_settings(make_settings)
    with WebhookReceiver() as receiver:
        async with running_notifier(settings), running_notifier(settings):
            request_ids = [await finished_request(repository, receiver.url())
                           for _ in range(10)]
            for request_id in request_ids:
                await eventually(functools.partial(_state_is, repository, request_id,
                                                   "delivered"))
    ids = [post.headers["webhook-id"] for post in receiver.posts]
    assert len(ids) == 10 and len(set(ids)) == 10


async def test_a_killed_notifier_delivers_once_after_restart(
        make_settings: Callable[..., Settings], repository: Repository) -> None:
    settings = webhook_settings(make_settings)
    environment = {**os.environ,
                   "PIXPIPE_DATABASE_URL": settings.storage.resolved_database_url,
                   "PIXPIPE_NATS_URL": settings.nats.url or "",
                   "PIXPIPE_DATA_DIR": str(settings.storage.data_dir),
                   "PIXPIPE_STATUS_PORT": "0",
                   "PIXPIPE_ALLOW_PRIVATE_NETWORKS": "true",
                   "PIXPIPE_WEBHOOK_SECRET": SECRET,
                   "PIXPIPE_WEBHOOK_RETRY_SCHEDULE": "0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3",
                   "PIXPIPE_WEBHOOK_POLL_SECONDS": "0.1",
                   "PIXPIPE_WEBHOOK_LEASE_SECONDS": "1"}

    async def start_notifier() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pixpipe_services.notifier.main", env=environment,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    receiver = WebhookReceiver()
    first = await start_notifier()
    second: asyncio.subprocess.Process | None = None
    try:
        request_id = await finished_request(repository, receiver.url())
        await eventually(lambda: _attempts_at_least(repository, request_id, 1))
        first.send_signal(signal.SIGKILL)
        await first.wait()
        with receiver:
            second = await start_notifier()
            await asyncio.to_thread(receiver.wait_for_success)
            await eventually(lambda: _state_is(repository, request_id, "delivered"))
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
    assert len(receiver.successes()) == 1
    assert len(receiver.posts) == 1
