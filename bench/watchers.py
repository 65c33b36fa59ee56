"""``make bench`` (watchers): commit-to-watcher delay with 100 watchers on one running request.

Every status event carries ``emitted_at``, stamped right after the worker's commit; each of
the watchers records when it received the event. Prints p50 and p99 against the 100 ms target.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path

import grpc

from bench.corpus import corpus_dir, load_photos, products_csv, serving
from bench.pipeline import StackClient, bench_settings, run_request
from bench.stats import percentile
from pixpipe.client.connection import unbatched
from pixpipe.dev.stack import Stack
from pixpipe.v1 import status_pb2, status_pb2_grpc

TARGET_P99_MS = 100.0


async def watch(address: str, request_id: str, ready: asyncio.Event,
                delays: list[float]) -> int:
    """One watcher on its own channel; appends each image event's delay in ms."""
    async with grpc.aio.insecure_channel(address) as channel:
        # As pixpipe.client does: a busy stream may pack several events into one message.
        call = status_pb2_grpc.StatusServiceStub(channel).WatchStatus(
            status_pb2.WatchStatusRequest(request_id=request_id, allow_batches=True))
        received = 0
        while isinstance(message := await call.read(), status_pb2.WatchStatusResponse):
            now = time.time()
            for event in unbatched(message):
                kind = event.WhichOneof("event")
                if kind == "snapshot":
                    ready.set()
                elif kind == "image":
                    delays.append((now - event.emitted_at.ToNanoseconds() / 1e9) * 1000)
                    received += 1
        return received


def watcher_process(status_address: str, count: int, request_ids: Queue[str],
                    ready: Queue[int], results: Queue[tuple[list[float], int]]) -> None:
    """A client process with ``count`` watchers (100 users are not one event loop)."""

    async def run() -> tuple[list[float], int]:
        ready.put(0)  # imported and running: the upload may start
        request_id = await asyncio.to_thread(request_ids.get)
        delays: list[float] = []
        readiness = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.create_task(watch(status_address, request_id, event, delays))
                 for event in readiness]
        await asyncio.gather(*(event.wait() for event in readiness))
        ready.put(count)
        counts = await asyncio.gather(*tasks)
        return delays, min(counts)

    results.put(asyncio.run(run()))


def measure(client: StackClient, status_address: str, csv_bytes: bytes, watchers: int,
            processes: int) -> tuple[list[float], int]:
    context = multiprocessing.get_context("spawn")
    request_ids: Queue[str] = context.Queue()
    ready: Queue[int] = context.Queue()
    results: Queue[tuple[list[float], int]] = context.Queue()
    shares = [watchers // processes + (1 if n < watchers % processes else 0)
              for n in range(processes)]
    watcher_processes = [
        context.Process(target=watcher_process,
                        args=(status_address, share, request_ids, ready, results))
        for share in shares if share]
    for process in watcher_processes:
        process.start()
    for _ in watcher_processes:
        ready.get(timeout=120)
    try:
        answer = client.upload(csv_bytes)
        for _ in watcher_processes:
            request_ids.put(answer.request_id)
        delays: list[float] = []
        fewest = sys.maxsize
        for _ in watcher_processes:
            part, least = results.get(timeout=600)
            delays.extend(part)
            fewest = min(fewest, least)
        return delays, fewest
    finally:
        for process in watcher_processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--client-processes", type=int, default=1,
                        help="processes the watchers are spread over (they stand for "
                             "separate users)")
    parser.add_argument("--warmup", type=int, default=32,
                        help="images of an unmeasured request first, so the figures are of a "
                             "running service, not of workers starting their codec "
                             "processes (default 32; 0 skips it)")
    args = parser.parse_args(argv)
    photos = load_photos(corpus_dir())
    with tempfile.TemporaryDirectory(prefix="pixpipe-bench-watch-") as tmp, \
            serving(photos) as base_url:
        settings, environment = bench_settings(Path(tmp))
        stack = Stack(settings=settings, log_dir=Path(tmp) / "logs",
                      environment=environment)
        stack.start()
        client = StackClient(settings.network)
        try:
            if args.warmup:
                run_request(client, stack, products_csv(base_url, photos, args.warmup),
                            args.warmup, "warm-up")
            delays, fewest = measure(
                client, f"127.0.0.1:{settings.network.status_port}",
                products_csv(base_url, photos, args.images), args.watchers,
                args.client_processes)
        finally:
            client.close()
            stack.stop()
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    print(f"\nwatchers: {args.watchers} in {args.client_processes} client processes on one "
          f"request of {args.images} images; "
          f"{len(delays)} image events received (at least {fewest} per watcher)")
    print(f"commit-to-watcher delay: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"mean {statistics.fmean(delays):.1f} ms, max {max(delays):.1f} ms "
          f"(target p99 < {TARGET_P99_MS:.0f} ms: {'met' if p99 < TARGET_P99_MS else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
