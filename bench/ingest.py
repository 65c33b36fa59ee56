"""``python -m bench.ingest``: how fast the ingest service takes a catalogue-sized upload.

Starts the stack without workers (the jobs stay queued and nothing else competes for the
cores) on SQLite, or on PostgreSQL when PIXPIPE_BENCH_DATABASE_URL is set (in a database of its
own on that server, dropped afterwards, so that runs do not slow down on what earlier ones
left). Then, in each of
``--repeat`` rounds, uploads a CSV of ``--images`` URLs (five per product) over gRPC, in
256 KB chunks, and over REST (POST /upload/), each timed from the first byte sent to the
answer: parsed, recorded, every job acknowledged by JetStream. The jobs are purged after each
upload. Last, a 50 MB CSV of as many images (long URLs, a description column) goes up over
gRPC, and the ingest process's peak RSS is read from /proc.

``--stages`` first times the stages in this process, on the same database and broker: parse,
image ids, database writes, publishing (wall and this process's CPU).

A benchmark, not a test: it exits non-zero only when the run itself breaks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import nats
from rich.table import Table

from bench.harness import BenchError, console, fresh_database, run_benchmark
from bench.pipeline import bench_settings
from pixpipe.bus import JOBS_STREAM, Bus
from pixpipe.client.uploads import byte_chunks, upload_requests
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.engine import create_engine, session_factory
from pixpipe.db.repository import Repository
from pixpipe.dev.stack import Stack
from pixpipe.domain import RequestOptions
from pixpipe.job_batch import uuid4_hexes
from pixpipe.settings import Settings
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc

TARGET_IMAGES_PER_SECOND = 30_000
TARGET_PEAK_RSS_MB = 300
_PER_PRODUCT = 5



def catalogue_csv(images: int, *, url_padding: int = 0, description: int = 0) -> bytes:
    """``images`` distinct URLs, five per product; padding makes the file as large as asked."""
    pad = "p" * url_padding
    rows = ["S. No.,Product Name,Input Image Urls" + (",Description" if description else "")]
    for serial, start in enumerate(range(0, images, _PER_PRODUCT), start=1):
        urls = ",".join(f"https://cdn.shop.example/{pad}products/{serial}/{n}.jpg?v={n}"
                        for n in range(start, min(start + _PER_PRODUCT, images)))
        rows.append(f'{serial},Product {serial},"{urls}"' +
                    (f",{'d' * description}" if description else ""))
    return ("\n".join(rows) + "\n").encode()


def fifty_megabytes(images: int) -> bytes:
    """The largest upload allowed (50 MiB), of ``images`` images."""
    base = len(catalogue_csv(images))
    room = 50 * 1024 * 1024 - base - 4096
    products = -(-images // _PER_PRODUCT)
    description = room // (2 * products)
    padding = (room - description * products) // images
    return catalogue_csv(images, url_padding=padding, description=description)


def upload_grpc(stub: ingest_pb2_grpc.IngestServiceStub, data: bytes) -> int:
    messages = upload_requests(ingest_pb2.UploadMetadata(file_name="b.csv"),
                               byte_chunks(data))
    answer: ingest_pb2.UploadResponse = stub.Upload(messages, timeout=300)
    return answer.image_count


def upload_rest(client: httpx.Client, gateway: str, data: bytes) -> int:
    response = client.post(f"{gateway}/upload/", files={"file": ("b.csv", data, "text/csv")})
    if response.status_code != 200:
        raise BenchError(f"REST upload answered {response.status_code}: {response.text[:500]}")
    count: int = response.json()["image_count"]
    return count


def proc_status(pid: int, field: str) -> float:
    """A /proc/<pid>/status figure in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def purge_jobs(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().purge_stream(JOBS_STREAM)
    finally:
        await client.close()


@contextmanager
def stage(stages: list[tuple[str, float, float]], name: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    stages.append((name, time.perf_counter() - wall, time.process_time() - cpu))


async def time_stages(settings: Settings, data: bytes) -> list[tuple[str, float, float]]:
    """(stage, wall seconds, CPU seconds of this process) for one upload done by hand."""
    stages: list[tuple[str, float, float]] = []
    engine = create_engine(settings.storage.resolved_database_url)
    repository = Repository(session_factory(engine))
    bus = await Bus.connect(settings.nats, name="bench-ingest")
    try:
        await repository.get_request(str(uuid.UUID(int=0)))  # open the connection pool
        with stage(stages, "parse and check the CSV"):
            parsed = parse_products_csv(data)
        with stage(stages, "image ids (UUID4)"):
            uuid4_hexes(parsed.image_count)
        with stage(stages, "record request, products, images (ids included)"):
            _request_id, jobs = await repository.create_request(
                parsed, options=RequestOptions(), webhook_url=None, file_name="stages.csv")
        with stage(stages, "publish, every acknowledgement awaited"):
            await bus.publish_jobs(jobs)
    finally:
        await bus.close()
        repository.close()
        await engine.dispose()
    await purge_jobs(settings.nats.url or "")
    return stages


def measure(settings: Settings, environment: dict[str, str], log_dir: Path,
            args: argparse.Namespace, database: str) -> None:
    stack = Stack(settings=settings, workers=0, log_dir=log_dir, environment=environment)
    stack.start()
    ingest = stack.processes["ingest"].pid
    live = settings.updated(nats_url=stack.nats_url,
                            database_url=settings.storage.resolved_database_url)
    data = catalogue_csv(args.images)
    try:
        if args.stages:
            stages = asyncio.run(time_stages(live, data))
            table = Table(title=f"stages of {args.images:,} images in one process ({database})",
                          title_justify="left")
            for column in ("stage", "wall s", "CPU s"):
                table.add_column(column, justify="left" if column == "stage" else "right")
            for name, wall, cpu in stages:
                table.add_row(name, f"{wall:.3f}", f"{cpu:.3f}")
            console.print(table)
        rates: dict[str, list[float]] = {"gRPC": [], "REST": []}
        cpus: dict[str, list[float]] = {"gRPC": [], "REST": []}
        gateway = stack.gateway_url
        channel = grpc.insecure_channel(f"127.0.0.1:{settings.network.ingest_port}")
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        console.print(f"{args.images:,} images, {len(data) / 1e6:.1f} MB; {database}; "
                      f"{os.cpu_count()} cores")
        with httpx.Client(timeout=300) as http:
            for round_number in range(1, args.repeat + 1):
                for interface in ("gRPC", "REST"):
                    cpu = cpu_seconds(ingest)
                    started = time.perf_counter()
                    count = (upload_grpc(stub, data) if interface == "gRPC"
                             else upload_rest(http, gateway, data))
                    seconds = time.perf_counter() - started
                    if count != args.images:
                        raise BenchError(f"{interface} upload counted {count} images")
                    rates[interface].append(count / seconds)
                    cpus[interface].append(cpu_seconds(ingest) - cpu)
                    console.print(f"  round {round_number} {interface}: {seconds:.2f} s, "
                                  f"{count / seconds:,.0f} images/s, ingest CPU "
                                  f"{cpus[interface][-1]:.2f} s")
                    asyncio.run(purge_jobs(stack.nats_url))
            peak_catalogue = proc_status(ingest, "VmHWM")
            big = fifty_megabytes(args.images)
            started = time.perf_counter()
            upload_grpc(stub, big)
            big_seconds = time.perf_counter() - started
            asyncio.run(purge_jobs(stack.nats_url))
        channel.close()
        peak_big = proc_status(ingest, "VmHWM")

        table = Table(title=f"ingest of {args.images:,} images on {database}",
                      title_justify="left")
        for column in ("figure", "best", "median", "target"):
            table.add_column(column, justify="left" if column == "figure" else "right")
        for interface, values in rates.items():
            met = max(values) >= TARGET_IMAGES_PER_SECOND
            table.add_row(f"{interface} images/s", f"{max(values):,.0f}",
                          f"{statistics.median(values):,.0f}",
                          f"{'[green]' if met else '[red]'}≥ {TARGET_IMAGES_PER_SECOND:,}")
            table.add_row(f"  ingest CPU s per upload ({interface})", f"{min(cpus[interface]):.2f}",
                          f"{statistics.median(cpus[interface]):.2f}", "")
        table.add_row(f"peak RSS after the {args.images:,}-image uploads, MB",
                      f"{peak_catalogue:.0f}", "", "")
        table.add_row(f"peak RSS after a {len(big) / 2**20:.0f} MiB upload ({big_seconds:.1f} s), "
                      "MB", f"{peak_big:.0f}", "",
                      f"{'[green]' if peak_big <= TARGET_PEAK_RSS_MB else '[red]'}"
                      f"≤ {TARGET_PEAK_RSS_MB}")
        console.print(table)
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of one gRPC and one "
                        "REST upload; the best shows the least disturbed run (default 3)")
    parser.add_argument("--stages", action="store_true",
                        help="first time parse, ids, database writes and publishing apart")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeat < 1:
        parser.error("--images and --repeat must be positive")
    server = os.environ.get("PIXPIPE_BENCH_DATABASE_URL")

    def run(data_dir: Path) -> None:
        settings, environment = bench_settings(data_dir)
        with contextlib.ExitStack() as cleanup:
            if server:
                database = cleanup.enter_context(fresh_database(server))
                environment["PIXPIPE_DATABASE_URL"] = database
                settings = settings.updated(database_url=database)
            measure(settings, environment, data_dir / "logs", args,
                    "PostgreSQL" if server else "SQLite")

    return run_benchmark("pixpipe-bench-ingest-", run, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
