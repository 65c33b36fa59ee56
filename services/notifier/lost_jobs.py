"""Fails the images of accepted requests whose jobs are gone, so nothing stays open forever.

Two ways an image can be left open with no job that will ever settle it: its job never reached
the queue or left it without a result (an upload cut off between recording and queueing, a
stream lost with its broker's disk), and its last delivery's worker died while the
max-deliveries advisory that would have failed it was lost (advisories are not persisted).
A request idle for longer than any job can take is checked against the work queue: with no
job of it left, every open image fails; otherwise only images left processing for that long.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from pixpipe.bus import Bus
from pixpipe.db.repository import Repository
from pixpipe.domain import TERMINAL_REQUEST_STATES
from pixpipe.events import EventPublisher
from pixpipe.runtime import sleep_unless_stopped
from pixpipe.settings import JobSettings

log = logging.getLogger(__name__)

LOST_JOB_REASON = "its job was lost before a result was recorded"
SWEEP_INTERVAL_SECONDS = 30.0


def job_lifetime(jobs: JobSettings, *, fetch_timeout_seconds: float) -> timedelta:
    """Longer than one delivery can stay silent: the ack wait, a whole download, the codec's
    work and the longest retry delay, with a minute to spare."""
    longest_delay = max(jobs.retry_backoff_seconds, default=0.0)
    return timedelta(seconds=jobs.ack_wait_seconds + fetch_timeout_seconds
                     + longest_delay + 60.0)


async def sweep_lost_jobs_once(bus: Bus, repository: Repository, publisher: EventPublisher,
                               *, lifetime: timedelta) -> int:
    """One pass; returns how many requests it finished."""
    idle_before = datetime.now(UTC) - lifetime
    finished = 0
    for request_id in await repository.idle_open_requests(idle_before=idle_before):
        waiting = await bus.jobs_waiting(request_id)
        counters = await repository.fail_lost_images(
            request_id, LOST_JOB_REASON,
            only_processing_before=idle_before if waiting else None)
        if counters is None:
            continue
        log.warning("request %s: failed images whose jobs were lost (%d jobs left)",
                    request_id, waiting)
        if counters.status in TERMINAL_REQUEST_STATES:
            finished += 1
            await publisher.publish_completion(request_id)
    return finished


async def keep_sweeping_lost_jobs(bus: Bus, repository: Repository, publisher: EventPublisher,
                                  lifetime: timedelta, stop: asyncio.Event, *,
                                  interval: float = SWEEP_INTERVAL_SECONDS) -> None:
    while not stop.is_set():
        try:
            await sweep_lost_jobs_once(bus, repository, publisher, lifetime=lifetime)
        except Exception:
            log.warning("sweeping lost jobs failed", exc_info=True)
        await sleep_unless_stopped(stop, interval)
