"""``python -m bench.catalogue``: one catalogue-sized request on every interface.

Starts the stack with its defaults (SQLite, embedded NATS, two workers; PostgreSQL when
PIXPIPE_BENCH_DATABASE_URL is set) and an origin that answers 404 to every image, so the
figures are pixpipe's own per-image overhead rather than Pillow's. Then, for a request of
``--images`` (default 100,000) URLs:

- ingest images/s over gRPC and over REST (upload call to answer: parsed, recorded, every
  job acknowledged by JetStream);
- jobs/s for failing images (answer to the completion the database records);
- GET /status p50/p99 (summary and first page of 1000 images) and the summary alone;
- snapshot latency of late WatchStatus joiners on the running request;
- the webhook body's bytes and the output CSV's time to stream;
- the ingest process's peak RSS.

``--tracing otlp`` runs every service with tracing on, exporting over OTLP/HTTP to a loopback
sink that reads each batch and drops it: the cost of tracing to the services, without a
collector's.

Each figure is printed beside its target and as a ratio to a baseline measured in the same
run where one exists. A benchmark, not a test: it exits non-zero only when the run breaks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from rich.table import Table

from bench import cpu
from bench.corpus import serving
from bench.harness import BenchError, console, fresh_database, run_benchmark
from bench.pipeline import StackClient, bench_settings
from bench.stats import percentile
from pixpipe.dev.stack import Stack
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2, status_pb2_grpc

_TERMINAL = (status_pb2.REQUEST_STATE_COMPLETED, status_pb2.REQUEST_STATE_FAILED)


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    baseline: str = ""


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        console.print(f"  {figure.name}: {figure.value:,.1f} {figure.unit}")

    def print(self, title: str) -> None:
        table = Table(title=title, title_justify="left")
        for column in ("figure", "value", "target", "", "baseline (same run)"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for figure in self.figures:
            verdict = {True: "[green]met[/green]", False: "[red]not met[/red]",
                       None: ""}[figure.met]
            table.add_row(figure.name, f"{figure.value:,.1f} {figure.unit}", figure.target,
                          verdict, figure.baseline)
        console.print(table)


def catalogue_csv(base_url: str, images: int, *, per_product: int = 5, tag: str = "") -> bytes:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for serial, start in enumerate(range(0, images, per_product), start=1):
        urls = ",".join(f"{base_url}/missing/{tag}{index}.jpg"
                        for index in range(start, min(start + per_product, images)))
        lines.append(f'{serial},SKU {serial},"{urls}"')
    return ("\n".join(lines) + "\n").encode()


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    bodies: list[int]
    status = 204

    def do_POST(self) -> None:  # the http.server handler name
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        self.bodies.append(length)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _posts_received(path: str, status: int) -> Iterator[tuple[str, list[int]]]:
    """A loopback server answering every POST ``status``; yields its URL and the sizes of
    the bodies it received."""
    bodies: list[int] = []
    handler = type("Handler", (_WebhookHandler,), {"bodies": bodies, "status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}", bodies
    finally:
        server.shutdown()
        server.server_close()


def webhook_receiver() -> contextlib.AbstractContextManager[tuple[str, list[int]]]:
    return _posts_received("/hook", 204)


def otlp_sink() -> contextlib.AbstractContextManager[tuple[str, list[int]]]:
    """An OTLP/HTTP endpoint that drops what it gets (200 and an empty body is a success)."""
    return _posts_received("", 200)


def wait_terminal(client: StackClient, request_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_status(request_id, summary_only=True)
        if status.status in _TERMINAL:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"request not terminal after {timeout:g} s: "
                             f"{status.completed}+{status.failed}/{status.total}")
        time.sleep(0.5)


def latencies(call: object, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        seconds.append(time.perf_counter() - started)
    return seconds


async def snapshot_latencies(address: str, request_id: str, watchers: int) -> list[float]:
    """Late joiners one after another: the time from opening the stream to the snapshot."""
    seconds = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        for _ in range(watchers):
            started = time.perf_counter()
            call = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id))
            first = await call.read()
            seconds.append(time.perf_counter() - started)
            call.cancel()
            if not isinstance(first, status_pb2.WatchStatusResponse) or \
                    first.WhichOneof("event") != "snapshot":
                raise BenchError("a watcher's first message was not a snapshot")
    return seconds


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ms(seconds: float) -> float:
    return seconds * 1000


def measure(settings: Settings, environment: dict[str, str], log_dir: Path, origin: str,
            images: int, report: Report) -> None:
    stack = Stack(settings=settings, workers=2, log_dir=log_dir, environment=environment)
    stack.start()
    client = StackClient(settings.network)
    gateway = f"http://127.0.0.1:{settings.network.gateway_port}"
    try:
        with webhook_receiver() as (hook_url, bodies), httpx.Client(timeout=300) as http:
            csv_bytes = catalogue_csv(origin, images, tag="g")
            console.print(f"uploading {images:,} images over gRPC ({len(csv_bytes) / 1e6:.1f} MB)")
            started = time.perf_counter()
            answer = client.upload(csv_bytes, webhook_url=hook_url)
            grpc_seconds = time.perf_counter() - started
            uploaded_wall = time.time()
            drain_before = cpu.snapshot()
            report.add(Figure("ingest over gRPC", images / grpc_seconds, "images/s",
                              ">= 30,000/s", images / grpc_seconds >= 30_000))
            wait_terminal(client, answer.request_id, timeout=max(600.0, images / 50))
            drain_cores = cpu.usage(drain_before, cpu.snapshot(), {
                process.pid: name.split("-")[0] for name, process in stack.processes.items()})
            full = client.get_status(answer.request_id, summary_only=True)
            drain = full.completed_at.ToNanoseconds() / 1e9 - uploaded_wall
            report.add(Figure("jobs/s for failing images (404)", images / drain, "jobs/s",
                              f">= 1,000/s ({images:,} in <= {images / 1000:.0f} s)",
                              images / drain >= 1000))
            if drain_cores is not None:
                # CPU per job holds still when other load on the machine slows the rate.
                elapsed = time.time() - uploaded_wall
                parts = {name: cores * elapsed / images * 1000
                         for name, cores in drain_cores.items()}
                own = sum(ms_per_job for name, ms_per_job in parts.items()
                          if name not in (cpu.OTHER, cpu.BENCH))
                report.add(Figure("CPU per failing job, all services", own, "ms", "",
                                  None, ", ".join(f"{name} {value:.2f}" for name, value
                                                  in sorted(parts.items()) if value >= 0.01
                                                  and name not in (cpu.OTHER, cpu.BENCH))))
                report.add(Figure("other load during the drain", drain_cores.get(cpu.OTHER, 0),
                                  "cores"))
            request_id = answer.request_id
            summary = latencies(lambda: http.get(f"{gateway}/status/{request_id}",
                                                 params={"limit": 1}), 5)
            page = latencies(lambda: http.get(f"{gateway}/status/{request_id}"), 50)
            p50 = statistics.median(page)
            report.add(Figure("GET /status p50 (summary + 1000 images)", ms(p50), "ms",
                              "<= 50 ms", ms(p50) <= 50,
                              f"summary + 1 image: {ms(statistics.median(summary)):.1f} ms"))
            report.add(Figure("GET /status p99", ms(percentile(page, 0.99)), "ms"))
            last = http.get(f"{gateway}/status/{request_id}",
                            params={"status": "failed", "limit": 1000})
            report.add(Figure("status JSON, one page", len(last.content) / 1024, "KB"))
            started = time.perf_counter()
            with http.stream("GET", f"{gateway}/status/{request_id}/csv") as response:
                rows = sum(chunk.count(b"\n") for chunk in response.iter_bytes())
            csv_seconds = time.perf_counter() - started
            report.add(Figure(f"output CSV ({rows - 1:,} rows) over REST", csv_seconds, "s",
                              "<= 5 s", csv_seconds <= 5))
            deadline = time.monotonic() + 60
            while not bodies and time.monotonic() < deadline:
                time.sleep(0.2)
            if not bodies:
                raise BenchError("the webhook never arrived")
            report.add(Figure("webhook body", bodies[0] / 1024, "KB", "<= 1024 KB",
                              bodies[0] <= 1024 * 1024))

            rest_csv = catalogue_csv(origin, images, tag="r")
            console.print(f"uploading {images:,} images over REST")
            started = time.perf_counter()
            response = http.post(f"{gateway}/upload/",
                                 files={"file": ("catalogue.csv", rest_csv, "text/csv")})
            rest_seconds = time.perf_counter() - started
            if response.status_code != 200:
                raise BenchError(f"REST upload answered {response.status_code}: "
                                 f"{response.text[:300]}")
            report.add(Figure("ingest over REST", images / rest_seconds, "images/s",
                              ">= 30,000/s", images / rest_seconds >= 30_000,
                              f"gRPC: {images / grpc_seconds:,.0f}/s"))
            running = response.json()["request_id"]
            joins = asyncio.run(snapshot_latencies(
                f"127.0.0.1:{settings.network.status_port}", running, 20))
            report.add(Figure("late watcher's snapshot p50 (running request)",
                              ms(statistics.median(joins)), "ms", "<= 100 ms",
                              ms(max(joins)) <= 100, f"max {ms(max(joins)):.1f} ms"))
            report.add(Figure("ingest peak RSS", peak_rss_mb(stack.processes["ingest"].pid),
                              "MB", "(50 MB CSV: bench.ingest)"))
    finally:
        client.close()
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalogue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--tracing", choices=("off", "otlp"), default="off",
                        help="otlp: trace every service, exporting to a loopback sink")
    args = parser.parse_args(argv)
    server = os.environ.get("PIXPIPE_BENCH_DATABASE_URL")
    title = f"catalogue of {args.images:,} images on {'PostgreSQL' if server else 'SQLite'}"
    if args.tracing != "off":
        title += f", tracing to {args.tracing}"

    def run(data_dir: Path) -> None:
        settings, environment = bench_settings(data_dir)
        console.print(f"{title}; data in {data_dir}")
        report = Report()
        with contextlib.ExitStack() as cleanup:
            if server:
                database = cleanup.enter_context(fresh_database(server))
                environment["PIXPIPE_DATABASE_URL"] = database
                settings = settings.updated(database_url=database)
            origin = cleanup.enter_context(serving([]))
            exported: list[int] = []
            environment["PIXPIPE_TRACING"] = args.tracing  # off even if the shell says otherwise
            if args.tracing == "otlp":
                environment["OTEL_EXPORTER_OTLP_ENDPOINT"], exported = cleanup.enter_context(
                    otlp_sink())
            measure(settings, environment, data_dir / "logs", origin, args.images, report)
            if args.tracing == "otlp":
                report.add(Figure("spans exported", sum(exported) / 1e6, "MB",
                                  baseline=f"{len(exported)} batches"))
        report.print(title)

    return run_benchmark("pixpipe-catalogue-", run, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
