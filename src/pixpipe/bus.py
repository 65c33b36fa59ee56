"""The NATS JetStream bus: stream and consumer setup, publishing jobs and status events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from pixpipe.domain import ImageJob
from pixpipe.job_batch import JobBatch
from pixpipe.pipelined_publish import publish_acknowledged
from pixpipe.settings import JobSettings, NatsSettings

log = logging.getLogger(__name__)

JOBS_STREAM = "PIXPIPE_JOBS"
EVENTS_STREAM = "PIXPIPE_EVENTS"
# Two lanes in the one work queue, each with its own consumer: a small request's jobs go to
# the express lane, which workers pull beside the bulk lane rather than behind it, so a
# request of ten images is not queued behind another one's hundred thousand.
JOBS_SUBJECT_PREFIX = "pixpipe.jobs"
EXPRESS_JOBS_SUBJECT_PREFIX = "pixpipe.expressjobs"
EVENTS_SUBJECT_PREFIX = "pixpipe.events"
# Core NATS, outside every stream: "a request just finished" for notifiers to start its
# webhook at once. Losing one only delays the webhook to the next poll.
COMPLETIONS_SUBJECT = "pixpipe.completions"
WORKERS_DURABLE = "pixpipe-workers"
EXPRESS_WORKERS_DURABLE = "pixpipe-workers-express"
# Both lanes' consumers: a job that used up its deliveries in either.
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*"
# Jobs published but not yet acknowledged, at most (4096 of ~300 bytes: about 1 MB).
_PUBLISH_WINDOW = 4096


def jobs_subject(request_id: str, *, express: bool = False) -> str:
    return f"{EXPRESS_JOBS_SUBJECT_PREFIX if express else JOBS_SUBJECT_PREFIX}.{request_id}"


def events_subject(request_id: str) -> str:
    return f"{EVENTS_SUBJECT_PREFIX}.{request_id}"


@dataclass
class Bus:
    """A connected NATS client with its JetStream context."""

    client: NatsClient
    js: JetStreamContext
    nats: NatsSettings

    @classmethod
    async def connect(cls, settings: NatsSettings, *, name: str) -> Bus:
        url = settings.url or f"nats://127.0.0.1:{settings.embedded_port}"
        client = await nats.connect(
            servers=[part.strip() for part in url.split(",")],
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            token=settings.token,
        )
        bus = cls(client=client, js=client.jetstream(timeout=settings.request_timeout_seconds),
                  nats=settings)
        # A fresh cluster elects its JetStream leader a few seconds after it accepts
        # connections; a service started alongside it waits rather than crashes.
        deadline = asyncio.get_running_loop().time() + settings.startup_wait_seconds
        while True:
            try:
                await bus.ensure_streams()
                return bus
            except Exception as error:
                if asyncio.get_running_loop().time() > deadline:
                    await bus.close()
                    raise
                log.info("JetStream not ready yet (%s); retrying", type(error).__name__)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self.client.is_closed:
            return
        try:
            await self.client.drain()
        except Exception:
            # Draining needs a live connection; when the broker is gone just close, and a
            # close that finds the socket already dead has nothing left to do.
            with contextlib.suppress(Exception):
                await self.client.close()

    async def ensure_streams(self) -> None:
        """Create or update both streams; safe to call from every service at start-up."""
        replicas = self.nats.stream_replicas
        await self._ensure_stream(StreamConfig(
            name=JOBS_STREAM,
            subjects=[f"{JOBS_SUBJECT_PREFIX}.>", f"{EXPRESS_JOBS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
            num_replicas=replicas, duplicate_window=120.0,
        ))
        await self._ensure_stream(StreamConfig(
            name=EVENTS_STREAM, subjects=[f"{EVENTS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            num_replicas=replicas, max_age=7 * 24 * 3600.0, duplicate_window=120.0,
        ))

    async def _ensure_stream(self, config: StreamConfig) -> None:
        assert config.name is not None
        try:
            await self.js.stream_info(config.name)
        except NotFoundError:
            try:
                await self.js.add_stream(config)
            except Exception:  # another service created it at the same moment
                await self.js.stream_info(config.name)
            return
        await self.js.update_stream(config)

    def job_consumer_config(self, jobs: JobSettings, *, express: bool = False) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=EXPRESS_WORKERS_DURABLE if express else WORKERS_DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=jobs.ack_wait_seconds,
            max_deliver=jobs.max_deliver,
            max_ack_pending=10_000,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=f"{EXPRESS_JOBS_SUBJECT_PREFIX if express else JOBS_SUBJECT_PREFIX}.>",
        )

    async def publish_jobs(self, jobs: Sequence[ImageJob], *,
                           headers: Mapping[str, str] | None = None) -> None:
        """Publish every job and return once JetStream has stored each one; raise if any was
        refused or went unacknowledged for the request timeout.

        Up to _PUBLISH_WINDOW jobs are in flight at once; Nats-Msg-Id makes a re-published
        job a no-op inside the duplicate window. ``headers`` (the request's trace context)
        go with every job.
        """
        if isinstance(jobs, JobBatch):
            subject = jobs_subject(jobs.request_id, express=jobs.express)
            messages: Iterable[tuple[str, str, bytes]] = (
                (subject, message_id, payload) for message_id, payload in jobs.messages())
        else:
            messages = ((jobs_subject(job.request_id), job.message_id,
                         job.model_dump_json().encode()) for job in jobs)
        await publish_acknowledged(self.client, messages, window=_PUBLISH_WINDOW, headers=headers,
                                   timeout=self.nats.request_timeout_seconds)

    async def jobs_waiting(self, request_id: str) -> int:
        """Jobs of a request still in the work queue: waiting, in hand or awaiting redelivery
        (an acknowledged job leaves the stream)."""
        info = await self.js.stream_info(JOBS_STREAM, subjects_filter=f"pixpipe.*.{request_id}")
        return sum((info.state.subjects or {}).values())

    async def publish_event(self, request_id: str, payload: bytes, *, message_id: str,
                            confirm: bool = True,
                            headers: Mapping[str, str] | None = None) -> None:
        """Publish a status event into PIXPIPE_EVENTS, with ``headers`` besides its id.

        ``confirm=False`` skips waiting for JetStream's acknowledgement: for the many
        per-image events, which watchers can do without (they resynchronise from the
        database); the stream still stores them and de-duplicates by message id.
        """
        headers = ({**headers, "Nats-Msg-Id": message_id} if headers
                   else {"Nats-Msg-Id": message_id})
        if confirm:
            await self.js.publish(events_subject(request_id), payload, headers=headers)
        else:
            await self.client.publish(events_subject(request_id), payload, headers=headers)

    async def announce_completion(self, request_id: str, *,
                                  headers: Mapping[str, str] | None = None) -> None:
        """Tell the notifiers a request finished (its completion event is in the stream)."""
        await self.client.publish(COMPLETIONS_SUBJECT, request_id.encode(),
                                  headers=dict(headers) if headers else None)
