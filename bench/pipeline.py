"""``make bench``: images/s through the whole stack against raw Pillow on the same images.

Serves the photo corpus from loopback and starts the stack with its defaults (SQLite, embedded
NATS, two workers). Then, in each of ``--repeat`` rounds, measures the raw Pillow rate of the
images (one process per core, the workers' default transform, the stack idle) and uploads the
same images over gRPC, timing them from the Upload call to the completion the database records
(GetStatus is polled to learn of it). Prints both rates and the ratio of the best of each;
the target is at least 0.7.
A benchmark, not a test: it exits non-zero only when the run itself breaks.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.table import Table

from bench import cpu
from bench.corpus import Photo, corpus_dir, cycle, load_photos, products_csv, serving
from bench.harness import BenchError, console, run_benchmark
from bench.profiled_worker import EXPERIMENTS, EXPERIMENTS_VARIABLE
from bench.stages import ProfiledStack, print_stages
from pixpipe.client.uploads import byte_chunks, upload_requests
from pixpipe.codec import TransformOptions, TransformResult, transform_image
from pixpipe.dev.embedded_nats import free_port
from pixpipe.dev.stack import Stack
from pixpipe.errors import DecodeError
from pixpipe.settings import EncodingSettings, NetworkSettings, Settings
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc

TARGET_RATIO = 0.7
POLL_SECONDS = 0.2
# Cores used by processes outside the benchmark above which figures are flagged / not judged.
NOISE_CORES = 0.1
UNRELIABLE_CORES = 0.25
_TERMINAL = (status_pb2.REQUEST_STATE_COMPLETED, status_pb2.REQUEST_STATE_FAILED)
# The worker count `make run` starts: Stack's and pixpipe-stack's default.
DEFAULT_WORKERS = Stack(settings=Settings()).workers

@dataclass(frozen=True)
class Rate:
    label: str
    images: int
    seconds: float
    # Cores that processes outside the measurement used meanwhile: noise when well above 0.
    other_cores: float | None = None

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


@dataclass(frozen=True)
class PipelineRun:
    rate: Rate
    upload_seconds: float  # until the Upload RPC returned: parsed, recorded, jobs queued
    first_done_seconds: float  # until the first poll saw an image finished
    server_seconds: float  # the request's created_at → completed_at, as the database says
    bytes_in: int
    bytes_out: int
    cores: dict[str, float] | None  # average cores each part of the machine used meanwhile


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="images per run (default 500)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of one raw Pillow pass then one request through the "
                             "stack; the ratio uses the best figure of each side, the one "
                             "least disturbed by other load (default 3)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"worker processes (default {DEFAULT_WORKERS}, as make run)")
    parser.add_argument("--warmup", type=int, default=32,
                        help="images of an unmeasured request first, so the workers' "
                             "codec processes are started (default 32; 0 skips it)")
    parser.add_argument("--profile", action="store_true",
                        help="run workers that time each stage of a job and print where the "
                             "time goes (bench/profiled_worker.py); costs a little throughput")
    parser.add_argument("--experiment", action="append", default=[],
                        choices=sorted(EXPERIMENTS),
                        help="with --profile: a candidate fix the profiled workers apply "
                             "(repeatable; see bench/profiled_worker.py)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data directory (logs, database, outputs)")
    args = parser.parse_args(argv)
    if args.experiment and not args.profile:
        parser.error("--experiment needs --profile")
    if args.images < 1 or args.repeat < 1 or args.workers < 1 or args.warmup < 0:
        parser.error("--images, --repeat and --workers must be positive, --warmup >= 0")
    return args


# --- raw Pillow -----------------------------------------------------------------------------

def transform_options(encoding: EncodingSettings) -> TransformOptions:
    """What a worker passes to the codec for an upload without options."""
    return TransformOptions(quality=encoding.default_quality, format=encoding.default_format,
                            effort=encoding.default_effort, max_pixels=encoding.max_image_pixels)


class RawPillow:
    """The transform over the images in one process per core: the baseline.

    A ``concurrent.futures`` pool with one submit per image, as simple as Pillow on every
    core gets. It stays up through the benchmark so its runs can alternate with the
    pipeline's: the machine's speed drifts (other tenants of the host, clocks), and a ratio
    of figures measured seconds apart is fairer than one of figures minutes apart.
    """

    def __init__(self, images: list[bytes], options: TransformOptions, processes: int) -> None:
        self._images = images
        self._options = options
        self.label = f"raw Pillow ({processes} processes)"
        self._pool = ProcessPoolExecutor(max_workers=processes,
                                         mp_context=multiprocessing.get_context("forkserver"))
        # Start the processes and warm their caches before anything is timed.
        _settle([self._pool.submit(transform_image, data, options)
                 for data in images[:max(2 * processes, 8)]])

    def measure(self, stack: Stack) -> Rate:
        """One timed pass; the stack's services count as other load (they should idle)."""
        before = cpu.snapshot()
        started = time.perf_counter()
        _settle([self._pool.submit(transform_image, data, self._options)
                 for data in self._images])
        elapsed = time.perf_counter() - started
        cores = cpu.usage(before, cpu.snapshot(), _cpu_groups(stack))
        # This process and its children (the pool) are the measurement; the rest is noise.
        other = (sum(used for group, used in cores.items() if not group.startswith(cpu.BENCH))
                 if cores is not None else None)
        return Rate(self.label, len(self._images), elapsed, other)

    def close(self) -> None:
        self._pool.shutdown()


def _settle(futures: list[Future[TransformResult]]) -> None:
    for index, future in enumerate(futures):
        try:
            future.result()
        except DecodeError as error:
            raise BenchError(f"raw Pillow could not transform image {index}: "
                             f"{error.reason}") from error


# --- the stack ------------------------------------------------------------------------------

def bench_settings(data_dir: Path) -> tuple[Settings, dict[str, str]]:
    """Defaults everywhere but the data directory, free ports and fetching from loopback."""
    overrides: dict[str, str] = {
        "PIXPIPE_DATA_DIR": str(data_dir),
        "PIXPIPE_ALLOW_PRIVATE_NETWORKS": "true",
        "PIXPIPE_EMBEDDED_NATS_PORT": str(free_port()),
        "PIXPIPE_GATEWAY_PORT": str(free_port()),
        "PIXPIPE_INGEST_PORT": str(free_port()),
        "PIXPIPE_STATUS_PORT": str(free_port()),
        # The runs cycle over a few photos: reuse would copy instead of encoding them, and the
        # codec is what these benchmarks measure (bench.reuse measures reuse).
        "PIXPIPE_REUSE_OUTPUTS": "false",
    }
    # Other PIXPIPE_* variables in the environment still apply, as they do for `make run`.
    settings = Settings.from_variables(overrides)
    return settings, overrides


class StackClient:
    """The gRPC calls a user makes: upload a CSV, poll its status."""

    def __init__(self, network: NetworkSettings) -> None:
        wildcard = ("0.0.0.0", "::")  # noqa: S104  (compared with, never bound to)
        host = "127.0.0.1" if network.bind_host in wildcard else network.bind_host
        self._ingest = grpc.insecure_channel(f"{host}:{network.ingest_port}")
        self._status = grpc.insecure_channel(f"{host}:{network.status_port}")
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self._ingest)
        self.status = status_pb2_grpc.StatusServiceStub(self._status)

    def close(self) -> None:
        self._ingest.close()
        self._status.close()

    def upload(self, csv_bytes: bytes, *, webhook_url: str = "") -> ingest_pb2.UploadResponse:
        response: ingest_pb2.UploadResponse = self.ingest.Upload(
            _upload_messages(csv_bytes, webhook_url), timeout=300)
        return response

    def get_status(self, request_id: str, *, summary_only: bool) -> status_pb2.RequestStatus:
        response: status_pb2.GetStatusResponse = self.status.GetStatus(
            status_pb2.GetStatusRequest(request_id=request_id, summary_only=summary_only),
            timeout=30)
        return response.status


def _upload_messages(csv_bytes: bytes, webhook_url: str = "",
                     ) -> Iterator[ingest_pb2.UploadRequest]:
    return upload_requests(ingest_pb2.UploadMetadata(file_name="bench.csv",
                                                     webhook_url=webhook_url),
                           byte_chunks(csv_bytes))


def run_request(client: StackClient, stack: Stack, csv_bytes: bytes, count: int,
                label: str) -> PipelineRun:
    """Upload, poll until terminal, and check that every image completed.

    The run ends when the database recorded the request's completion (what a watcher or a
    webhook learns a few milliseconds later), so the figure does not depend on how often
    the benchmark polls; polling gently keeps the benchmark's own load off the cores.
    """
    timeout = max(120.0, count * 1.0)
    cpu_before = cpu.snapshot()
    started = time.perf_counter()
    started_wall = time.time()
    response = client.upload(csv_bytes)
    uploaded = time.perf_counter()
    if response.image_count != count:
        raise BenchError(f"upload accepted {response.image_count} images, expected {count}")
    first_done = 0.0
    while True:
        status = client.get_status(response.request_id, summary_only=True)
        now = time.perf_counter()
        if not first_done and status.completed + status.failed:
            first_done = now
        if status.status in _TERMINAL:
            break
        if now - started > timeout:
            raise BenchError(f"request not terminal after {timeout:g} s: "
                             f"{status.completed}+{status.failed}/{status.total}")
        _check_alive(stack)
        time.sleep(POLL_SECONDS)
    cores = cpu.usage(cpu_before, cpu.snapshot(), _cpu_groups(stack))
    full = client.get_status(response.request_id, summary_only=False)
    # Host clock on both sides: the services run on this machine.
    finished = started + (full.completed_at.ToNanoseconds() / 1e9 - started_wall)
    if full.completed != count or full.failed:
        errors = sorted({image.error for image in full.images if image.error})
        raise BenchError(f"{full.completed}/{count} images completed, {full.failed} failed: "
                         f"{'; '.join(errors[:5]) or 'no error recorded'}")
    server = (full.completed_at.ToDatetime() - full.created_at.ToDatetime()).total_seconds()
    return PipelineRun(
        rate=Rate(label, count, finished - started,
                  cores.get(cpu.OTHER, 0.0) if cores is not None else None),
        upload_seconds=uploaded - started,
        first_done_seconds=(first_done or finished) - started,
        server_seconds=server,
        bytes_in=sum(image.bytes_in for image in full.images),
        bytes_out=sum(image.bytes_out for image in full.images),
        cores=cores,
    )


def _cpu_groups(stack: Stack) -> dict[int, str]:
    """Workers together (their codec pools are their children), every other service alone."""
    return {process.pid: "worker" if name.startswith("worker-") else name
            for name, process in stack.processes.items()}


def _check_alive(stack: Stack) -> None:
    for name, process in stack.processes.items():
        if process.poll() is not None:
            raise BenchError(f"{name} exited with code {process.returncode}")


def measure(settings: Settings, environment: dict[str, str], log_dir: Path, base_url: str,
            photos: list[Photo], raw_pillow: RawPillow, args: argparse.Namespace,
            ) -> tuple[list[Rate], list[PipelineRun]]:
    """Start the stack and warm it up, then alternate ``args.repeat`` raw Pillow passes with
    as many requests of ``args.images`` through the stack."""
    profiled: ProfiledStack | None = None
    if args.profile:
        experiments = {EXPERIMENTS_VARIABLE: ",".join(args.experiment)}
        profiled = ProfiledStack(settings=settings, workers=args.workers, log_dir=log_dir,
                                 environment={**environment, **experiments},
                                 profile_dir=log_dir / "profile")
    stack = profiled or Stack(settings=settings, workers=args.workers, log_dir=log_dir,
                              environment=environment)
    stack.start()
    client = StackClient(settings.network)
    try:
        if args.warmup:
            run_request(client, stack, products_csv(base_url, photos, args.warmup),
                        args.warmup, "warm-up")
        if profiled:
            profiled.collect()  # drop the warm-up's timings
        raw: list[Rate] = []
        runs: list[PipelineRun] = []
        label = f"pixpipe end to end ({args.workers} workers)"
        for index in range(args.repeat):
            raw.append(raw_pillow.measure(stack))
            runs.append(run_request(client, stack, products_csv(base_url, photos, args.images),
                                    args.images, label))
            console.print(f"round {index + 1}: raw Pillow {raw[-1].per_second:.1f} images/s, "
                          f"end to end {runs[-1].rate.per_second:.1f} images/s")
        if profiled:
            print_stages(console, profiled.collect(), sum(run.rate.seconds for run in runs),
                         capacity=args.workers * settings.jobs.worker_concurrency)
        return raw, runs
    finally:
        client.close()
        stack.stop()


# --- report ---------------------------------------------------------------------------------

_CPU_LABELS = {"worker": "worker event loops", "worker children": "codec processes"}


def report(raw: list[Rate], runs: list[PipelineRun], workers: int) -> float:
    table = Table(title="pixpipe throughput", title_justify="left")
    table.add_column("run")
    table.add_column("images", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("images/s", justify="right")
    table.add_column("other load (cores)", justify="right")
    for rate in [*raw, *(run.rate for run in runs)]:
        table.add_row(rate.label, str(rate.images), f"{rate.seconds:.2f}",
                      f"{rate.per_second:.1f}",
                      "" if rate.other_cores is None else f"{rate.other_cores:.2f}")
    console.print(table)
    noisy = max(rate.other_cores or 0.0 for rate in [*raw, *(run.rate for run in runs)])
    if noisy >= NOISE_CORES:
        console.print(f"[yellow]note:[/yellow] other processes used up to {noisy:.2f} cores "
                      "during a measurement; the figures are disturbed")
    for index, run in enumerate(runs, start=1):
        console.print(
            f"run {index}: upload RPC (parse, record, queue) {run.upload_seconds:.2f} s, "
            f"first image done at {run.first_done_seconds:.2f} s,\n"
            f"  server created→completed {run.server_seconds:.2f} s, "
            f"{run.bytes_in / 1e6:.1f} MB in → {run.bytes_out / 1e6:.1f} MB out")
        if run.cores:
            parts = sorted(run.cores.items(), key=lambda item: -item[1])
            console.print(f"  cores used (of {os.cpu_count()}):")
            console.print("    " + ", ".join(
                f"{_CPU_LABELS.get(name, name)} {used:.2f}" for name, used in parts
                if used >= 0.01))
    raw_rate = max(rate.per_second for rate in raw)
    pipeline_rate = max(run.rate.per_second for run in runs)
    ratio = pipeline_rate / raw_rate
    verdict = "[green]met[/green]" if ratio >= TARGET_RATIO else "[red]not met[/red]"
    if noisy >= UNRELIABLE_CORES:
        # Other load slows raw Pillow (all cores busy) more than the pipeline (partly idle),
        # which flatters the ratio: do not judge it.
        verdict = "[yellow]not judged, other load disturbed the run[/yellow]"
    best = f" (best of {len(runs)} each)" if len(runs) > 1 else ""
    console.print(f"ratio end-to-end / raw = [bold]{ratio:.2f}[/bold]{best} "
                  f"(target >= {TARGET_RATIO:.2f}: {verdict}; {workers} workers)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos = load_photos(corpus_dir())
    images = cycle(photos, args.images)
    processes = os.cpu_count() or 1

    def run(data_dir: Path) -> None:
        settings, environment = bench_settings(data_dir)
        console.print(f"{args.images} images cycling over {len(photos)} photos; "
                      f"{processes} cores; data in {data_dir}")
        raw_pillow = RawPillow([photo.data for photo in images],
                               transform_options(settings.encoding), processes)
        try:
            with serving(photos) as base_url:
                raw, runs = measure(settings, environment, data_dir / "logs", base_url,
                                    photos, raw_pillow, args)
        finally:
            raw_pillow.close()
        report(raw, runs, args.workers)

    return run_benchmark("pixpipe-bench-", run, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
