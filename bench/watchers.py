"""``make bench`` (watchers): commit-to-watcher delay with 100 watchers on one running request.

Every status event carries ``emitted_at``, stamped right after the worker's commit; each of
the watchers records when it received the event. Prints p50 and p99 against the 100 ms target.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench.corpus import corpus_dir, load_photos, products_csv, serving
from bench.pipeline import bench_settings
from pixpipe.stack import Stack
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc

TARGET_P99_MS = 100.0


async def watch(address: str, request_id: str, ready: asyncio.Event,
                delays: list[float]) -> int:
    """One watcher on its own channel; appends each image event's delay in ms."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = status_pb2_grpc.StatusServiceStub(channel).WatchStatus(
            status_pb2.WatchStatusRequest(request_id=request_id))
        received = 0
        while isinstance(event := await call.read(), status_pb2.WatchStatusResponse):
            now = time.time()
            kind = event.WhichOneof("event")
            if kind == "snapshot":
                ready.set()
            elif kind == "image":
                delays.append((now - event.emitted_at.ToNanoseconds() / 1e9) * 1000)
                received += 1
        return received


async def measure(settings_port: int, ingest_port: int, csv_bytes: bytes, watchers: int,
                  ) -> tuple[list[float], int]:
    metadata = ingest_pb2.UploadMetadata(file_name="watchers.csv")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest_port}") as channel:
        # Hold the upload's jobs back until every watcher is connected: publish happens at
        # the end of Upload, so connect the watchers to a request id first is impossible;
        # instead the request is large enough that most of it runs after they connect.
        answer = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(iter([
            ingest_pb2.UploadRequest(metadata=metadata),
            ingest_pb2.UploadRequest(chunk=csv_bytes)]), timeout=120)
    delays: list[float] = []
    readiness = [asyncio.Event() for _ in range(watchers)]
    tasks = [asyncio.create_task(watch(f"127.0.0.1:{settings_port}", answer.request_id,
                                       ready, delays)) for ready in readiness]
    await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readiness)), 60)
    counts = await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
    return delays, min(counts)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args(argv)
    photos = load_photos(corpus_dir())
    with tempfile.TemporaryDirectory(prefix="pixpipe-bench-watch-") as tmp, \
            serving(photos) as base_url:
        settings, environment = bench_settings(Path(tmp))
        stack = Stack(settings=settings, workers=2, log_dir=Path(tmp) / "logs",
                      environment=environment)
        stack.start()
        try:
            delays, fewest = asyncio.run(measure(
                settings.status_port, settings.ingest_port,
                products_csv(base_url, photos, args.images), args.watchers))
        finally:
            stack.stop()
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    print(f"\nwatchers: {args.watchers} on one request of {args.images} images; "
          f"{len(delays)} image events received (at least {fewest} per watcher)")
    print(f"commit-to-watcher delay: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"mean {statistics.fmean(delays):.1f} ms, max {max(delays):.1f} ms "
          f"(target p99 < {TARGET_P99_MS:.0f} ms: {'met' if p99 < TARGET_P99_MS else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
