"""``python -m bench.reuse``: a catalogue in which 30 % of URLs repeat, with and without
content-addressed reuse (PIXPIPE_REUSE_OUTPUTS).

Serves the real 4 MP product photos (``shared/corpus/product-photos``) from loopback, each URL
a distinct source (the photo with a JPEG comment of its own, so the same pixels are decoded
and encoded at full cost but no two URLs share bytes), with an ETag and 304 answers to a
matching If-None-Match, as a CDN gives. Starts two stacks with their defaults (SQLite,
embedded NATS, two workers), one with reuse off and one with it on, warms both up, and in
each of ``--rounds`` rounds uploads the same fresh catalogue to each (alternating which goes
first), timed from the Upload call to the completion the database records. Prints the times,
the speed-up of the best of each (target >= 1.3) and whether every output is byte-identical,
then uploads the last catalogue to the reusing stack again: every URL is re-fetched
conditionally and answered 304. A benchmark, not a test: it exits non-zero only when the run
itself breaks.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import struct
import sys
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from bench import cpu
from bench.corpus import NOT_FOUND, URLS_PER_PRODUCT, corpus_dir, serve_http
from bench.harness import BenchError, console, run_benchmark
from bench.pipeline import StackClient, bench_settings
from pixpipe.dev.stack import Stack
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2

TARGET_SPEEDUP = 1.3
POLL_SECONDS = 0.2
_TERMINAL = (status_pb2.REQUEST_STATE_COMPLETED, status_pb2.REQUEST_STATE_FAILED)



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reuse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60, help="URLs per catalogue (60)")
    parser.add_argument("--repeats", type=float, default=0.3,
                        help="share of the URLs that repeat an earlier one (0.3)")
    parser.add_argument("--rounds", type=int, default=3, help="catalogues per stack (3)")
    parser.add_argument("--workers", type=int, default=2, help="workers per stack (2)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args(argv)
    if args.images < 2 or not 0 <= args.repeats < 1 or args.rounds < 1 or args.workers < 1:
        parser.error("--images >= 2, 0 <= --repeats < 1, --rounds and --workers >= 1")
    return args


def load_product_photos() -> list[bytes]:
    folder = corpus_dir() / "product-photos"
    photos = [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]
    if not photos:
        raise FileNotFoundError(f"no product photos in {folder}")
    return photos


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture as other bytes: a COM segment right after the SOI marker."""
    comment = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def catalogue_paths(name: str, count: int, repeats: float, seed: int) -> list[str]:
    """``count`` paths of which ``round(count * repeats)`` repeat an earlier one."""
    rng = random.Random(f"{seed}/{name}")  # noqa: S311  (seeded test data, not a secret)
    distinct = [f"/{name}/{index}.jpg" for index in range(count - round(count * repeats))]
    paths = distinct + [rng.choice(distinct) for _ in range(count - len(distinct))]
    rng.shuffle(paths)
    return paths


def products_csv(base_url: str, paths: list[str]) -> bytes:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for serial, start in enumerate(range(0, len(paths), URLS_PER_PRODUCT), start=1):
        cell = ",".join(base_url + path for path in paths[start:start + URLS_PER_PRODUCT])
        lines.append(f'{serial},SKU{serial},"{cell}"')
    return ("\n".join(lines) + "\n").encode()


# --- the origin -----------------------------------------------------------------------------

class Origin:
    """``GET /<catalogue>/<i>.jpg``: photo ``i mod n`` with a comment naming the path, an
    ETag and a Last-Modified; 304 to a matching If-None-Match. Bodies are made on first
    request and kept, so serving costs the benchmark next to nothing."""

    def __init__(self, photos: list[bytes]) -> None:
        self._photos = photos
        self._bodies: dict[bytes, bytes] = {}
        self.answers: Counter[int] = Counter()

    def body(self, path: bytes) -> bytes | None:
        body = self._bodies.get(path)
        if body is None:
            try:
                index = int(path.rsplit(b"/", 1)[-1].removesuffix(b".jpg"))
            except ValueError:
                return None
            body = with_comment(self._photos[index % len(self._photos)], path.decode())
            self._bodies[path] = body
        return body

    def answer(self, method: bytes, path: bytes, if_none_match: bytes | None) -> bytes:
        body = self.body(path) if method == b"GET" else None
        if body is None:
            self.answers[404] += 1
            return NOT_FOUND
        etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'
        head = (b"ETag: " + etag + b"\r\nLast-Modified: Tue, 01 Dec 2026 00:00:00 GMT\r\n")
        if if_none_match == etag:
            self.answers[304] += 1
            return b"HTTP/1.1 304 Not Modified\r\n" + head + b"\r\n"
        self.answers[200] += 1
        return (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + head +
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def serving(origin: Origin) -> AbstractContextManager[str]:
    def answer(method: bytes, path: bytes, headers: list[bytes]) -> bytes:
        if_none_match = next((line.split(b":", 1)[1].strip() for line in headers
                              if line.lower().startswith(b"if-none-match:")), None)
        return origin.answer(method, path, if_none_match)

    return serve_http(answer)


# --- the stacks -----------------------------------------------------------------------------

@dataclass
class Mode:
    label: str
    reuse: bool
    settings: Settings
    stack: Stack
    client: StackClient | None = None


@dataclass(frozen=True)
class Run:
    seconds: float
    # CPU seconds the stack's processes (codec processes included) spent on the run, which
    # other load on the machine disturbs far less than the wall time; None off Linux.
    stack_cpu_seconds: float | None
    codec_cpu_seconds: float | None  # the workers' codec processes alone
    other_cores: float | None
    # (serial, position) → SHA-256 of the output file.
    outputs: dict[tuple[int, int], str]


def start_mode(label: str, reuse: bool, root: Path, workers: int) -> Mode:
    data_dir = root / label
    settings, environment = bench_settings(data_dir)
    environment["PIXPIPE_REUSE_OUTPUTS"] = "true" if reuse else "false"
    stack = Stack(settings=settings, workers=workers, log_dir=data_dir / "logs",
                  environment=environment)
    mode = Mode(label, reuse, settings, stack)
    stack.start()
    mode.client = StackClient(settings.network)
    return mode


def run_catalogue(mode: Mode, csv_bytes: bytes, count: int) -> Run:
    client = mode.client
    assert client is not None
    cpu_before = cpu.snapshot()
    started = time.perf_counter()
    started_wall = time.time()
    response = client.upload(csv_bytes)
    if response.image_count != count:
        raise BenchError(f"upload accepted {response.image_count} images, expected {count}")
    while True:
        status = client.get_status(response.request_id, summary_only=True)
        if status.status in _TERMINAL:
            break
        if time.perf_counter() - started > max(300.0, 5.0 * count):
            raise BenchError(f"{mode.label}: request not terminal: "
                             f"{status.completed}+{status.failed}/{status.total}")
        for name, process in mode.stack.processes.items():
            if process.poll() is not None:
                raise BenchError(f"{mode.label}: {name} exited with {process.returncode}")
        time.sleep(POLL_SECONDS)
    elapsed = time.perf_counter() - started
    cores = cpu.usage(cpu_before, cpu.snapshot(),
                      {process.pid: name for name, process in mode.stack.processes.items()})
    full = client.get_status(response.request_id, summary_only=False)
    if full.completed != count:
        errors = sorted({image.error for image in full.images if image.error})
        raise BenchError(f"{mode.label}: {full.completed}/{count} images completed: "
                         f"{'; '.join(errors[:5])}")
    # From the upload call to the completion the database records (host clock both sides).
    seconds = full.completed_at.ToNanoseconds() / 1e9 - started_wall
    images_dir = mode.settings.storage.images_dir
    outputs = {}
    for image in full.images:
        relative = image.output_url.split("/processed_images/", 1)[1]
        outputs[(image.serial_number, image.position)] = hashlib.sha256(
            (images_dir / relative).read_bytes()).hexdigest()
    stack_cpu = codec_cpu = other = None
    if cores is not None:
        stack_cpu = elapsed * sum(used for group, used in cores.items()
                                  if group not in (cpu.OTHER, cpu.BENCH))
        codec_cpu = elapsed * sum(used for group, used in cores.items()
                                  if group.startswith("worker-") and group.endswith("children"))
        other = cores.get(cpu.OTHER, 0.0)
    return Run(seconds=seconds, stack_cpu_seconds=stack_cpu, codec_cpu_seconds=codec_cpu,
               other_cores=other, outputs=outputs)


def measure(args: argparse.Namespace, base_url: str, root: Path,
            ) -> tuple[dict[str, list[Run]], Run]:
    modes = [start_mode("reuse-off", False, root, args.workers),
             start_mode("reuse-on", True, root, args.workers)]
    try:
        for mode in modes:
            # Starts the codec processes and loads libvips; a catalogue of its own.
            paths = catalogue_paths(f"warm-{mode.label}", 8, 0.0, args.seed)
            run_catalogue(mode, products_csv(base_url, paths), len(paths))
        runs: dict[str, list[Run]] = {mode.label: [] for mode in modes}
        paths = []
        for round_index in range(args.rounds):
            paths = catalogue_paths(f"round-{round_index}", args.images, args.repeats,
                                    args.seed)
            csv_bytes = products_csv(base_url, paths)
            order = modes if round_index % 2 == 0 else modes[::-1]
            for mode in order:
                runs[mode.label].append(run_catalogue(mode, csv_bytes, len(paths)))
            console.print(f"round {round_index + 1}: " + ", ".join(
                f"{mode.label} {runs[mode.label][-1].seconds:.2f} s" for mode in modes))
        again = run_catalogue(modes[1], products_csv(base_url, paths), len(paths))
        return runs, again
    finally:
        for mode in modes:
            if mode.client is not None:
                mode.client.close()
            mode.stack.stop()


def report(args: argparse.Namespace, runs: dict[str, list[Run]], again: Run,
           origin: Origin) -> float:
    off, on = runs["reuse-off"], runs["reuse-on"]
    table = Table(title=f"a catalogue of {args.images} URLs, {args.repeats:.0%} repeating",
                  title_justify="left")
    table.add_column("run")
    table.add_column("seconds (each round)", justify="right")
    table.add_column("best images/s", justify="right")
    table.add_column("stack CPU s (of which codec)", justify="right")
    table.add_column("other load (cores)", justify="right")

    def cpu_cells(measured: list[Run]) -> tuple[str, str]:
        return (", ".join(f"{run.stack_cpu_seconds:.2f} ({run.codec_cpu_seconds:.2f})"
                          for run in measured if run.stack_cpu_seconds is not None),
                ", ".join(f"{run.other_cores:.2f}" for run in measured
                          if run.other_cores is not None))

    for label, measured in runs.items():
        best = min(run.seconds for run in measured)
        table.add_row(label, ", ".join(f"{run.seconds:.2f}" for run in measured),
                      f"{args.images / best:.1f}", *cpu_cells(measured))
    table.add_row("reuse-on, same catalogue again", f"{again.seconds:.2f}",
                  f"{args.images / again.seconds:.1f}", *cpu_cells([again]))
    console.print(table)
    identical = all(a.outputs == b.outputs for a, b in zip(off, on, strict=True))
    identical_again = again.outputs == on[-1].outputs
    console.print(f"outputs byte-identical with and without reuse: "
                  f"{'yes' if identical else '[red]NO[/red]'}; on the repeat upload: "
                  f"{'yes' if identical_again else '[red]NO[/red]'}")
    console.print(f"origin answers: {dict(sorted(origin.answers.items()))} "
                  f"(the repeat upload's {args.images} URLs were all conditional)")
    speedup = min(run.seconds for run in off) / min(run.seconds for run in on)
    verdict = ("[green]met[/green]" if speedup >= TARGET_SPEEDUP and identical
               else "[red]not met[/red]")
    per_round = sorted(a.seconds / b.seconds for a, b in zip(off, on, strict=True))
    console.print(f"speed-up with reuse = [bold]{speedup:.2f}×[/bold] (best of "
                  f"{args.rounds} each; target >= {TARGET_SPEEDUP}: {verdict}); per round "
                  f"{', '.join(f'{ratio:.2f}×' for ratio in per_round)}, median "
                  f"{statistics.median(per_round):.2f}×")
    off_cpu = [run.stack_cpu_seconds for run in off if run.stack_cpu_seconds is not None]
    on_cpu = [run.stack_cpu_seconds for run in on if run.stack_cpu_seconds is not None]
    if off_cpu and on_cpu:
        console.print(f"stack CPU per catalogue, median: {statistics.median(off_cpu):.2f} s "
                      f"without reuse, {statistics.median(on_cpu):.2f} s with it "
                      f"({statistics.median(off_cpu) / statistics.median(on_cpu):.2f}× less)")
    if not (identical and identical_again):
        raise BenchError("outputs differ between the runs")
    return speedup


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    origin = Origin(load_product_photos())

    def run(root: Path) -> None:
        console.print(f"{args.images} URLs per catalogue, {args.repeats:.0%} repeats, "
                      f"{args.rounds} rounds; data in {root}")
        with serving(origin) as base_url:
            runs, again = measure(args, base_url, root)
        report(args, runs, again, origin)

    return run_benchmark("pixpipe-bench-reuse-", run, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
