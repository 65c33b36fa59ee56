"""Processes one image job: fetch → transform → store, returning the outcome to record."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pixpipe import tracing
from pixpipe.codec import TransformOptions, transform_image
from pixpipe.domain import Effort, ImageFailure, ImageJob, ImageOutcome, ImageSuccess
from pixpipe.errors import DecodeError, FetchError
from pixpipe.fetcher import FetchedImage, SafeFetcher
from pixpipe.jpeg_encoders import prepare_vips
from pixpipe.object_storage import StorageUnavailable
from pixpipe.settings import CodecSettings, EncodingSettings
from pixpipe.storage import OutputStore
from pixpipe_services.worker.codec_pool import (
    ChildProcessDied,
    ChildProcessPool,
    MemoryLimitExceeded,
    TimeLimitExceeded,
)
from pixpipe_services.worker.reuse import OutputReuse

CODEC_NICENESS = 10
AUTOGROUP_NICENESS = 19


class TransientFailure(Exception):
    """A fault worth retrying later (network trouble, a 5xx, a crashed codec process)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def transform_options(job: ImageJob, encoding: EncodingSettings) -> TransformOptions:
    options = job.options
    return TransformOptions(
        quality=(options.quality if isinstance(options.quality, int)
                 else encoding.default_quality),
        max_width=options.max_width,
        max_height=options.max_height,
        format=options.format or encoding.default_format,
        max_pixels=encoding.max_image_pixels,
        effort=options.effort or encoding.default_effort,
        target_score=((options.target_score or encoding.default_target_score)
                      if options.quality == "auto" else None),
        measure_quality=bool(options.measure_quality),
    )


def _prepare_codec_process() -> None:
    # The worker decides when its codec processes stop; a terminal's Ctrl-C must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Pillow may take every core; at a lower priority it never delays the event loops that
    # acknowledge jobs, commit results and stream status (throughput is unchanged: the CPU
    # stays busy either way).
    os.nice(CODEC_NICENESS)
    _leave_autogroup()
    # Loaded before the first image, so no job pays for it (libvips encodes effort=max).
    prepare_vips()


def _leave_autogroup() -> None:
    """Lower the codec process's weight against every other process, not just its worker.

    Linux's scheduler autogroups (on by default for processes outside a cgroup, as with
    ``make run``) share the CPU equally between sessions first and apply nice values only
    inside a session. A codec process in its worker's session therefore takes the worker's
    full share from the notifier, the broker and the other services whenever it is busy.
    Its own session at the lowest autogroup priority lets every interactive process go
    first. Elsewhere (cgroups, other systems) this is a no-op and nice alone applies.
    """
    try:
        os.setsid()
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(AUTOGROUP_NICENESS))
    except OSError:
        pass


@dataclass(frozen=True)
class StoredImage:
    """What the codec process reports back: the file it wrote, not the bytes."""

    relative_path: str
    bytes_out: int
    width: int
    height: int
    quality_used: int | None = None
    encoder: str | None = None
    effort: Effort | None = None
    score: float | None = None


def transform_and_store(source: bytes, options: TransformOptions, store: OutputStore,
                        request_id: str, image_id: str) -> StoredImage:
    """Runs in a codec process: the output is written there, so it never crosses the pipe."""
    result = transform_image(source, options)
    relative_path = store.relative_path(request_id, image_id, result.extension)
    store.write(relative_path, result.data)
    return StoredImage(relative_path=relative_path, bytes_out=len(result.data),
                       width=result.width, height=result.height,
                       quality_used=result.quality_used, encoder=result.encoder,
                       effort=result.effort, score=result.score)


class CodecPool:
    """Runs Pillow in child processes so the event loop never blocks and every core works.

    An image past ``time_limit_seconds`` (its process is killed and replaced) or needing more
    than ``memory_limit_bytes`` of address space fails; None or 0 turns a limit off.
    """

    def __init__(self, processes: int, *, time_limit_seconds: float | None = None,
                 memory_limit_bytes: int | None = None) -> None:
        self._pool = ChildProcessPool(processes, initializer=_prepare_codec_process,
                                      time_limit=time_limit_seconds,
                                      memory_limit=memory_limit_bytes or None)

    @classmethod
    def from_settings(cls, codec: CodecSettings, processes: int) -> CodecPool:
        return cls(processes, time_limit_seconds=codec.time_limit_seconds,
                   memory_limit_bytes=codec.memory_limit_bytes)

    @property
    def pids(self) -> list[int]:
        return self._pool.pids

    async def transform_and_store(self, data: bytes, options: TransformOptions,
                                  store: OutputStore, job: ImageJob) -> StoredImage:
        try:
            return await self._pool.run(transform_and_store, data, options, store,
                                        job.request_id, job.image_id)
        except (TimeLimitExceeded, MemoryLimitExceeded) as error:
            # The image itself is the problem: another attempt would meet the same limit.
            raise DecodeError(str(error)) from None
        except ChildProcessDied:
            # Killed by the system, a crash in a native decoder: the pool starts a new process.
            raise TransientFailure("image processor crashed") from None
        except StorageUnavailable as error:
            raise TransientFailure(error.reason) from None

    async def aclose(self) -> None:
        await self._pool.aclose()


class ImageProcessor:
    def __init__(self, encoding: EncodingSettings, fetcher: SafeFetcher, codec: CodecPool,
                 store: OutputStore, reuse: OutputReuse | None = None) -> None:
        self._encoding = encoding
        self._fetcher = fetcher
        self._codec = codec
        self._store = store
        self._reuse = reuse

    async def process(self, job: ImageJob, *,
                      before_encoding: Callable[[], Awaitable[bool]] | None = None,
                      ) -> ImageOutcome:
        """Raises TransientFailure for faults a later attempt may not meet.

        ``before_encoding`` runs once the source is downloaded (or known unchanged), before
        the codec gets it; when it answers False (the image is unknown or already settled)
        nothing is encoded.
        """
        options = transform_options(job, self._encoding)
        reuse = self._reuse
        earlier = await reuse.earlier(job, options) if reuse is not None else None
        fetched = await self._fetch(
            job.url, reuse.conditional_headers(earlier) if reuse and earlier else None)
        if isinstance(fetched, ImageFailure):
            return fetched
        try:
            if fetched.not_modified:
                assert reuse is not None and earlier is not None
                if before_encoding is not None and not await before_encoding():
                    return ImageFailure(reason="image is not open for processing",
                                        bytes_in=earlier.known.output.bytes_in)
                reused = await reuse.reuse_unmodified(earlier, job)
                if reused is not None:
                    return reused
                fetched = await self._fetch(job.url, None)  # the earlier output is gone
                if isinstance(fetched, ImageFailure):
                    return fetched
            if before_encoding is not None and not await before_encoding():
                return ImageFailure(reason="image is not open for processing",
                                    bytes_in=len(fetched.content))
            source = fetched.content
            if reuse is None:
                return await self._encode(job, options, source)
            return await reuse.encode_once(job, options, fetched,
                                           lambda: self._encode(job, options, source))
        except StorageUnavailable as error:
            raise TransientFailure(error.reason) from None

    async def _fetch(self, url: str,
                     conditional: dict[str, str] | None) -> FetchedImage | ImageFailure:
        try:
            with tracing.span("fetch"):
                return await self._fetcher.fetch(url, conditional=conditional)
        except FetchError as error:
            if error.transient:
                raise TransientFailure(error.reason) from None
            return ImageFailure(reason=error.reason)

    async def _encode(self, job: ImageJob, options: TransformOptions,
                      source: bytes) -> ImageOutcome:
        bytes_in = len(source)
        try:
            # One span: the codec process decodes, encodes and writes the output in one go.
            with tracing.span("encode and store"):
                stored = await self._codec.transform_and_store(source, options, self._store,
                                                               job)
        except DecodeError as error:
            return ImageFailure(reason=error.reason, bytes_in=bytes_in)
        return ImageSuccess(output_path=stored.relative_path, bytes_in=bytes_in,
                            bytes_out=stored.bytes_out, width=stored.width,
                            height=stored.height, quality_used=stored.quality_used,
                            encoder=stored.encoder, effort=stored.effort, score=stored.score)
