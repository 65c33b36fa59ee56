"""Waiting on an in-process notifier's state (tests that run the notifier's Notifier)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pixpipe_services.notifier.main import Notifier

# The public address a notifier or worker under test builds absolute output URLs from.
BASE_URL = "https://pixpipe.test"


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Return once ``condition()`` holds; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (counters, not events, are observed)
            await asyncio.sleep(0.01)


async def wait_for_watchers(notifier: Notifier, count: int, seconds: float = 10.0) -> None:
    hub = notifier.hub
    assert hub is not None
    try:
        await until(lambda: hub.watcher_count == count, seconds)
    except TimeoutError:
        raise AssertionError(f"{hub.watcher_count} watchers, expected {count}") from None
