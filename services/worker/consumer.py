"""Pulls image jobs from the shared durable consumer and settles each one exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from pydantic import ValidationError

from pixpipe import tracing
from pixpipe.bus import JOBS_STREAM, MAX_DELIVERIES_ADVISORY, WORKERS_DURABLE, Bus
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageFailure, ImageJob, ImageOutcome
from pixpipe.events import EventPublisher
from pixpipe.metrics import WorkerMetrics, failure_kind
from pixpipe.retry import retry_delay
from pixpipe.runtime import sleep_unless_stopped
from pixpipe.settings import JobSettings
from pixpipe_services.worker.processor import ImageProcessor, TransientFailure

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

_FETCH_WAIT_SECONDS = 1.0
# A download still running after this long shows its image as processing.
SLOW_DOWNLOAD_SECONDS = 0.25


class ProcessingMark:
    """Marks one job's image processing at most once, whoever asks first: the timer of a
    slow download, or the job itself once its download is done."""

    def __init__(self, mark: Callable[[], Awaitable[bool]]) -> None:
        self._mark = mark
        self._task: asyncio.Task[bool] | None = None

    def soon(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._mark())

    async def now(self) -> bool:
        """Whether the image was open to work on (False: unknown or already terminal)."""
        self.soon()
        assert self._task is not None
        return await asyncio.shield(self._task)

    async def settled(self) -> None:
        """Wait for a mark under way, so nothing is committed before it; start none."""
        if self._task is not None:
            await asyncio.shield(self._task)


def settled_attributes(settled: ImageOutcome | TransientFailure | None,
                       ) -> dict[str, AttributeValue]:
    """What a job's span says of how it ended."""
    if settled is None:
        return {"pixpipe.outcome": "already settled"}
    if isinstance(settled, TransientFailure):
        return {"pixpipe.outcome": "retrying", "pixpipe.error": settled.reason}
    if isinstance(settled, ImageFailure):
        return {"pixpipe.outcome": "failed", "pixpipe.error": settled.reason,
                "pixpipe.bytes_in": settled.bytes_in or 0}
    return {"pixpipe.outcome": "completed", "pixpipe.bytes_in": settled.bytes_in,
            "pixpipe.bytes_out": settled.bytes_out}


class JobConsumer:
    def __init__(self, jobs: JobSettings, bus: Bus, repository: Repository,
                 processor: ImageProcessor, events: EventPublisher,
                 metrics: WorkerMetrics | None = None, *, shutdown_grace_seconds: float) -> None:
        self._metrics = metrics or WorkerMetrics()
        self._jobs = jobs
        self._shutdown_grace_seconds = shutdown_grace_seconds
        self._bus = bus
        self._repository = repository
        self._processor = processor
        self._events = events
        self._in_hand: set[asyncio.Task[None]] = set()
        self._job_finished = asyncio.Event()  # set whenever a job in hand is done
        self._working: dict[int, Msg] = {}  # the messages of the jobs being handled
        self._name = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def jobs_in_hand(self) -> int:
        return len(self._in_hand)

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle jobs until ``stop`` is set, then finish those in hand."""
        subscription = await self._subscribe(express=False)
        express = await self._subscribe(express=True)
        advisories = await self._bus.client.subscribe(
            MAX_DELIVERIES_ADVISORY, queue=WORKERS_DURABLE, cb=self._on_max_deliveries)
        capacity = self._jobs.worker_concurrency
        # Pull several jobs per request rather than one per finished job.
        pull_batch = max(1, capacity // 4)
        heartbeat = asyncio.create_task(self._keep_alive())
        express_pulls = asyncio.create_task(self._pull_express(express, stop, pull_batch))
        try:
            while not stop.is_set():
                free = capacity - len(self._in_hand)
                if free < pull_batch:
                    # One event rather than asyncio.wait on every job in hand, every time.
                    self._job_finished.clear()
                    await self._job_finished.wait()
                    continue
                try:
                    messages = await subscription.fetch(free, timeout=_FETCH_WAIT_SECONDS)
                except (NatsTimeoutError, TimeoutError):
                    continue  # no job arrived within the wait
                except Exception:
                    # Broker restarting or unreachable: the client reconnects by itself.
                    log.warning("fetching jobs failed; retrying", exc_info=True)
                    await sleep_unless_stopped(stop, 1.0)
                    continue
                self._start(messages)
        finally:
            express_pulls.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await express_pulls
            await advisories.unsubscribe()
            await self._finish_in_hand()
            heartbeat.cancel()
            for pulled in (subscription, express):
                with contextlib.suppress(Exception):
                    await pulled.unsubscribe()

    async def _subscribe(self, *, express: bool) -> JetStreamContext.PullSubscription:
        config = self._bus.job_consumer_config(self._jobs, express=express)
        assert config.durable_name is not None
        await self._bus.js.add_consumer(JOBS_STREAM, config.evolve(name=config.durable_name))
        return await self._bus.js.pull_subscribe_bind(config.durable_name, stream=JOBS_STREAM)

    async def _pull_express(self, subscription: JetStreamContext.PullSubscription,
                            stop: asyncio.Event, batch: int) -> None:
        """The express lane: small requests' jobs, pulled beside the bulk lane's rather than
        behind them. They may take the worker up to one batch past its concurrency, so a
        worker busy with bulk jobs still takes them at once."""
        ceiling = self._jobs.worker_concurrency + batch
        while not stop.is_set():
            if len(self._in_hand) >= ceiling:
                self._job_finished.clear()
                await self._job_finished.wait()
                continue
            try:
                messages = await subscription.fetch(min(batch, ceiling - len(self._in_hand)),
                                                    timeout=_FETCH_WAIT_SECONDS)
            except (NatsTimeoutError, TimeoutError):
                continue
            except Exception:
                log.warning("fetching express jobs failed; retrying", exc_info=True)
                await sleep_unless_stopped(stop, 1.0)
                continue
            self._start(messages)

    def _start(self, messages: list[Msg]) -> None:
        """A task per message, all sharing one read of their jobs' rows."""
        claims: list[tuple[Msg, ImageJob | None]] = []
        for message in messages:
            try:
                claims.append((message, ImageJob.model_validate_json(message.data)))
            except ValidationError:
                claims.append((message, None))
        lookup = asyncio.ensure_future(self._repository.open_jobs(  # noqa: RUF006 (each job's task holds it)
            [claimed.image_id for _, claimed in claims if claimed is not None]))
        for message, claimed in claims:
            task = asyncio.create_task(self._handle(message, claimed, lookup))
            self._in_hand.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        self._job_finished.set()

    async def _finish_in_hand(self) -> None:
        if not self._in_hand:
            return
        _done, pending = await asyncio.wait(self._in_hand,
                                            timeout=self._shutdown_grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, message: Msg, claimed: ImageJob | None,
                      lookup: asyncio.Future[dict[str, ImageJob]]) -> None:
        if claimed is None:
            log.error("dropping malformed job message: %r", message.data[:200])
            await message.term()
            return
        # The message names the image; what to fetch and how comes from the database, so a
        # message forged on the bus can neither point an image at another URL nor borrow
        # another request's options or key.
        try:
            # Shielded: a job cancelled on shutdown must not cancel its batch-mates' read.
            job = (await asyncio.shield(lookup)).get(claimed.image_id)
        except Exception:
            log.warning("could not look up job %s; it will be redelivered", claimed.message_id,
                        exc_info=True)
            with contextlib.suppress(Exception):
                await message.nak(delay=self._delay(message))
            return
        if job is None or job.request_id != claimed.request_id:
            if job is not None:
                log.error("dropping job %s: the image belongs to another request",
                          claimed.message_id)
            await message.ack()  # unknown, settled, or not what it claims to be
            return
        self._working[id(message)] = message
        self._metrics.in_flight.inc()
        try:
            # A child of the upload that queued the job, whose context the message carries.
            with self._metrics.seconds.time(), tracing.span(
                    "process image", kind="consumer", headers=message.headers,
                    attributes={"pixpipe.request_id": job.request_id,
                                "pixpipe.image_id": job.image_id}) as span:
                settled = await self._settle(job, message)
                if span is not None:
                    span.set_attributes(settled_attributes(settled))
        except asyncio.CancelledError:
            # Shutting down mid-job: hand it back at once rather than wait for the ack timeout.
            with contextlib.suppress(Exception):
                await message.nak()
            raise
        except Exception:
            log.exception("job %s failed unexpectedly; it will be redelivered",
                          job.message_id)
            with contextlib.suppress(Exception):
                await message.nak(delay=self._delay(message))
        finally:
            self._working.pop(id(message), None)
            self._metrics.in_flight.dec()

    async def _settle(self, job: ImageJob, message: Msg,
                      ) -> ImageOutcome | TransientFailure | None:
        """Process the job and settle its message; returns the outcome recorded, the failure
        to retry, or None for a redelivery of finished work."""
        mark = ProcessingMark(functools.partial(self._mark_processing, job))
        # A redelivery checks the image first, and a last delivery marks it at once, so an
        # image whose last worker dies is left processing for the lost-job sweeper to find.
        deliveries = message.metadata.num_delivered
        checked_first = deliveries > 1 or deliveries >= self._jobs.max_deliver
        if checked_first and not await mark.now():
            # Unknown or already terminal: a redelivery of finished work.
            await message.ack()
            return None
        # A first delivery goes straight to work: the image is marked processing once its
        # download is done or slow. A source that fails at once (a 404, a refused address)
        # then costs one commit and one event instead of two of each.
        timer = asyncio.get_running_loop().call_later(SLOW_DOWNLOAD_SECONDS, mark.soon)
        try:
            outcome = await self._processor.process(job, before_encoding=mark.now)
        except TransientFailure as failure:
            deliveries = message.metadata.num_delivered
            if deliveries < self._jobs.max_deliver:
                self._metrics.retries.inc()
                await mark.settled()
                await self._repository.note_retry(job.image_id, failure.reason)
                await message.nak(delay=self._delay(message))
                return failure
            outcome = ImageFailure(reason=failure.reason)
        finally:
            timer.cancel()
        # The processing commit, when there was one, comes first: versions stay in order.
        await mark.settled()
        finished = await self._repository.finish_image(job.image_id, outcome)
        if finished is not None:
            self._count(outcome)
            await self._events.image_changed(finished)
        await message.ack()
        return outcome

    async def _mark_processing(self, job: ImageJob) -> bool:
        started = await self._repository.start_image(job.image_id, worker=self._name)
        if started is None:
            return False
        await self._events.image_changed(started)
        return True

    def _count(self, outcome: ImageOutcome) -> None:
        if isinstance(outcome, ImageFailure):
            self._metrics.images.labels("failed").inc()
            self._metrics.failures.labels(failure_kind(outcome.reason)).inc()
        else:
            self._metrics.images.labels("completed").inc()

    def _delay(self, message: Msg) -> float:
        return retry_delay(self._jobs.retry_backoff_seconds,
                           message.metadata.num_delivered)

    async def _keep_alive(self) -> None:
        # A slow download must not look like a dead worker: extend the ack deadline of every
        # job in hand, at a third of the ack wait (one timer for all jobs, not one each).
        interval = max(self._jobs.ack_wait_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            for message in list(self._working.values()):
                with contextlib.suppress(Exception):
                    await message.in_progress()

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """A job ran out of deliveries without settling (its worker died): fail its image."""
        try:
            sequence = int(json.loads(advisory.data)["stream_seq"])
            raw = await self._bus.js.get_msg(JOBS_STREAM, sequence)
            assert raw.data is not None
            job = ImageJob.model_validate_json(raw.data)
            reason = await self._repository.last_error(job.image_id)
            attempts = self._jobs.max_deliver
            failure = ImageFailure(reason=reason or f"gave up after {attempts} attempts")
            finished = await self._repository.finish_image(job.image_id, failure)
            if finished is not None:
                await self._events.image_changed(finished)
            await self._bus.js.delete_msg(JOBS_STREAM, sequence)
        except Exception:
            log.exception("could not settle an exhausted job")
