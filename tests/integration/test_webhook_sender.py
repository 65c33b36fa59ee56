"""One webhook POST against real loopback receivers: what counts as an attempt, and bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from pixpipe.settings import Settings
from pixpipe_services.notifier.webhooks import MAX_RESPONSE_BYTES, WebhookSender

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def sender(make_settings: Callable[..., Settings]) -> AsyncIterator[WebhookSender]:
    settings = make_settings(webhook_secret=SECRET, webhook_timeout_seconds=3.0)
    sender = WebhookSender(settings.webhooks, settings.fetch)
    try:
        yield sender
    finally:
        await sender.aclose()


@pytest.mark.parametrize("url", ["http://a..b/hook", "http://①②⑦.0.0.1/hook",
                                 "http://[::1/hook"])
async def test_a_url_no_attempt_can_reach_is_one_failed_attempt(
        sender: WebhookSender, url: str) -> None:
    result, retry_after, retryable = await sender.post(url, "msg_1", b"{}")
    assert result.error is not None and result.status_code is None
    assert not result.succeeded and not retryable and retry_after is None


async def test_an_endless_answer_is_cut_off_and_the_status_counts(
        sender: WebhookSender) -> None:
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"x" * 16 * 1024)
        try:
            while True:  # until the notifier hangs up
                writer.write(chunk)
                await writer.drain()
                sent += 16 * 1024
                await asyncio.sleep(0.001)
        except (ConnectionError, OSError):
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        result, _, _ = await sender.post(f"http://127.0.0.1:{port}/hook", "msg_2", b"{}")
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert result.succeeded and result.status_code == 200
    assert elapsed < 2.0  # well inside the 3 s timeout: the body was not waited for
    assert MAX_RESPONSE_BYTES <= sent < 40 * MAX_RESPONSE_BYTES
