"""Content-addressed reuse: an image whose source bytes and options were encoded before gets
a copy of that output instead of a new encode, and a repeated URL is re-fetched conditionally.

The content key is a hash of the options key and the source bytes; the options key hashes the
tenant, every transform option and the encoder versions, so a new Pillow, libjpeg-turbo or
libvips (or a change to the transform, through CODEC_REVISION) never reuses an older output.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from functools import cache
from importlib import metadata
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from PIL import __version__ as pillow_version
from PIL import features

from pixpipe.codec import TransformOptions
from pixpipe.db.reuse import EarlierSource, KnownOutput, ReuseIndex, SourceAnswer
from pixpipe.domain import ImageJob, ImageOutcome, ImageSuccess
from pixpipe.fetcher import FetchedImage
from pixpipe.retry import doubling_delay
from pixpipe.storage import OutputStore

log = logging.getLogger(__name__)

# Bump when transform_image can produce other bytes for the same source and options.
CODEC_REVISION = 2  # 2: max without sRGB restatements; the faster quality score
# A worker refreshes its claim this often while it encodes, so a claim older than
# CLAIM_STALE belongs to a worker that died mid-encode and another may take it over. Short,
# because every worker holding a job of the same source waits that long for a dead claim
# (its jobs' lifetime is counted from the same clock).
CLAIM_REFRESH_SECONDS = 5.0
CLAIM_STALE = timedelta(seconds=20)
# Core NATS, outside every stream: "the output of this content key is recorded", so workers
# waiting for another's encode copy it at once. A lost notice costs only the wait until the
# next look at the database: after 0.05 s, doubling up to every 0.5 s.
READY_SUBJECT = "pixpipe.reuse.ready"
_MAX_POLL_SECONDS = 0.5


@cache
def encoder_version() -> str:
    def package(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    return (f"codec {CODEC_REVISION}; pillow {pillow_version}; "
            f"libjpeg-turbo {features.version('libjpeg_turbo')}; "
            f"webp {features.version('webp')}; avif {features.version('avif')}; "
            f"libvips {package('pyvips-binary')}")


def options_key(options: TransformOptions, *, tenant: str = "") -> str:
    """The part of every key that is not the source; the tenant keeps API keys apart."""
    text = json.dumps({"tenant": tenant, "options": dataclasses.asdict(options),
                       "encoder": encoder_version()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def content_key(source: bytes, options_key: str) -> str:
    digest = hashlib.blake2b(options_key.encode(), digest_size=32)
    digest.update(source)
    return digest.hexdigest()


def lookup_key(url: str, options_key: str) -> str:
    return hashlib.sha256(f"{options_key}\n{url}".encode()).hexdigest()


class OutputReuse:
    """One per worker process: the index in the database, the encodes under way in this
    process, and claims in the database for those under way in others, so that copies of
    one source arriving together are encoded once."""

    def __init__(self, index: ReuseIndex, store: OutputStore, *,
                 nats: NatsClient | None = None) -> None:
        self._index = index
        self._store = store
        self._nats = nats
        self._encoding: dict[str, asyncio.Future[None]] = {}
        self._waiting: dict[str, list[asyncio.Event]] = {}
        self._subscription: Any = None

    async def start(self) -> None:
        if self._nats is not None:
            self._subscription = await self._nats.subscribe(READY_SUBJECT, cb=self._on_ready)

    async def aclose(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def _on_ready(self, message: Msg) -> None:
        for event in self._waiting.get(message.data.decode(), ()):
            event.set()

    async def earlier(self, job: ImageJob, options: TransformOptions) -> EarlierSource | None:
        """The URL's last answer to the job's API key, when it had validators and its output
        is still known."""
        return await self._index.find_source(
            lookup_key(job.url, options_key(options, tenant=job.tenant)))

    @staticmethod
    def conditional_headers(earlier: EarlierSource) -> dict[str, str]:
        headers = {}
        if earlier.answer.etag:
            headers["If-None-Match"] = earlier.answer.etag
        if earlier.answer.last_modified:
            headers["If-Modified-Since"] = earlier.answer.last_modified
        return headers

    async def reuse_unmodified(self, earlier: EarlierSource,
                               job: ImageJob) -> ImageSuccess | None:
        """After a 304: the earlier output copied for this image (None: it is gone)."""
        key = earlier.answer.content_key
        copied = await self._copy(earlier.known.output, job)
        if copied is None:
            await self._forget(key)
        elif earlier.known.request_id != job.request_id:
            await self._record(key, job, copied, earlier.answer)
        return copied

    async def encode_once(self, job: ImageJob, options: TransformOptions,
                          fetched: FetchedImage,
                          encode: Callable[[], Awaitable[ImageOutcome]]) -> ImageOutcome:
        """A copy of the output of the same source and options if there is one, else
        ``encode()``, whose success is then offered to later images; a failure is not."""
        of_options = options_key(options, tenant=job.tenant)
        key = content_key(fetched.content, of_options)
        source = None
        if fetched.etag or fetched.last_modified:
            source = SourceAnswer(lookup_key=lookup_key(job.url, of_options), content_key=key,
                                  etag=fetched.etag, last_modified=fetched.last_modified)
        polls = 0
        while True:
            under_way = self._encoding.get(key)
            if under_way is not None:
                await asyncio.shield(under_way)
                continue
            # Listening before looking: a notice that arrives during the read is not lost.
            with self._notice_of(key) as ready:
                known = await self._index.find(key)
                if key in self._encoding:
                    continue  # this process started encoding it meanwhile
                if known is None:
                    done = asyncio.get_running_loop().create_future()
                    self._encoding[key] = done
                    try:
                        if await self._claim(key):
                            return await self._encode_claimed(key, job, source, encode)
                    finally:
                        del self._encoding[key]
                        done.set_result(None)
                    # Another worker is encoding the same source: its output is a copy away.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ready.wait(),
                                               doubling_delay(polls + 1, first=0.05,
                                                              cap=_MAX_POLL_SECONDS))
                    polls += 1
                    continue
            copied = await self._copy(known.output, job)
            if copied is not None:
                await self._record_hit(key, job, known, copied, source)
                return copied
            await self._forget(key)

    async def _record_hit(self, key: str, job: ImageJob, known: KnownOutput,
                          copied: ImageSuccess, source: SourceAnswer | None) -> None:
        # The entry moves to the newest request's copy; within one request it stays put.
        moved = known.request_id != job.request_id
        if moved or source is not None:
            await self._record(key, job, copied if moved else None, source)

    async def _encode_claimed(self, key: str, job: ImageJob, source: SourceAnswer | None,
                              encode: Callable[[], Awaitable[ImageOutcome]]) -> ImageOutcome:
        recorded = False
        keeping = asyncio.create_task(self._keep_claim(key))
        try:
            outcome = await encode()
            if isinstance(outcome, ImageSuccess):
                recorded = await self._record(key, job, outcome, source)
                if recorded and self._nats is not None:
                    with contextlib.suppress(Exception):
                        await self._nats.publish(READY_SUBJECT, key.encode())
            return outcome
        finally:
            keeping.cancel()
            if not recorded:
                await self._release(key)

    async def _keep_claim(self, key: str) -> None:
        while True:
            await asyncio.sleep(CLAIM_REFRESH_SECONDS)
            try:
                await self._index.refresh_claim(key)
            except Exception:
                log.warning("could not refresh the claim on %s", key, exc_info=True)

    @contextlib.contextmanager
    def _notice_of(self, key: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        waiting = self._waiting.setdefault(key, [])
        waiting.append(event)
        try:
            yield event
        finally:
            waiting.remove(event)
            if not waiting:
                del self._waiting[key]

    async def _copy(self, output: ImageSuccess, job: ImageJob) -> ImageSuccess | None:
        extension = output.output_path.rsplit(".", 1)[-1]
        target = self._store.relative_path(job.request_id, job.image_id, extension)
        if not await asyncio.to_thread(self._store.copy, output.output_path, target):
            return None
        return dataclasses.replace(output, output_path=target)

    # Reuse only saves work: a failed write below must not fail the image it is about.

    async def _record(self, key: str, job: ImageJob, output: ImageSuccess | None,
                      source: SourceAnswer | None) -> bool:
        try:
            await self._index.record(key, job.request_id, output, source)
        except Exception:
            log.warning("could not record reusable output %s", key, exc_info=True)
            return False
        return True

    async def _claim(self, key: str) -> bool:
        try:
            return await self._index.claim(key, stale_after=CLAIM_STALE)
        except Exception:
            log.warning("could not claim %s; encoding it anyway", key, exc_info=True)
            return True

    async def _release(self, key: str) -> None:
        try:
            await self._index.release(key)
        except Exception:
            log.warning("could not release the claim on %s", key, exc_info=True)

    async def _forget(self, key: str) -> None:
        try:
            await self._index.forget(key)
        except Exception:
            log.warning("could not forget reusable output %s", key, exc_info=True)
