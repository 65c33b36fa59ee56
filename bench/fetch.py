"""``python -m bench.fetch``: what the safe fetcher costs per download, alone.

Serves the product photos (and 404s) from a loopback origin in a thread of this process and
fetches them with ``SafeFetcher`` from the main thread: one at a time and eight at once (a
worker's concurrency), photos and 404s. Prints, per scenario, downloads/s and the main
thread's CPU per download (the fetcher's event loop alone; the origin runs in its own thread),
best of ``--repeat`` rounds. Compare two versions of the fetch path by running this under
each, alternating, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

import pixpipe
from bench.corpus import Photo, corpus_dir, serving
from bench.harness import console
from pixpipe.errors import FetchError
from pixpipe.fetcher import SafeFetcher
from pixpipe.settings import FetchSettings

CONCURRENCY = 8


@dataclass(frozen=True)
class Figure:
    scenario: str
    fetches: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.fetches / self.seconds

    @property
    def cpu_us_per_fetch(self) -> float:
        return self.cpu_seconds / self.fetches * 1e6


def product_photos(folder: Path) -> list[Photo]:
    photos = [Photo(name=path.name, media_type="image/jpeg", data=path.read_bytes())
              for path in sorted(folder.glob("*.jpg"))]
    if not photos:
        raise SystemExit(f"no .jpg photos in {folder}")
    return photos


async def _fetch(fetcher: SafeFetcher, url: str) -> None:
    try:
        await fetcher.fetch(url)
    except FetchError as error:
        if error.reason != "HTTP 404 from source":
            raise


async def _sequential(fetcher: SafeFetcher, urls: list[str]) -> None:
    for url in urls:
        await _fetch(fetcher, url)


async def _concurrent(fetcher: SafeFetcher, urls: list[str]) -> None:
    queue = iter(urls)

    async def lane() -> None:
        for url in queue:
            await _fetch(fetcher, url)

    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))


async def _measure(scenario: str, run: Callable[[SafeFetcher, list[str]], Awaitable[None]],
                   urls: list[str]) -> Figure:
    # A loopback origin stands in for a public one; its address is still checked.
    async with SafeFetcher(FetchSettings(), is_address_allowed=lambda ip: ip.is_loopback) as f:
        await run(f, urls[:CONCURRENCY])  # connections open, code warm
        started, cpu_started = time.perf_counter(), time.thread_time()
        await run(f, urls)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    return Figure(scenario, len(urls), seconds, cpu)


async def measure(base_url: str, photos: list[Photo], count: int) -> list[Figure]:
    images = [f"{base_url}/photos/{photos[i % len(photos)].name}?n={i}" for i in range(count)]
    missing = [f"{base_url}/missing/{i}.jpg" for i in range(count * 10)]
    return [await _measure("photos, one at a time", _sequential, images),
            await _measure(f"photos, {CONCURRENCY} at once", _concurrent, images),
            await _measure("404s, one at a time", _sequential, missing),
            await _measure(f"404s, {CONCURRENCY} at once", _concurrent, missing)]


def report(rounds: list[list[Figure]]) -> None:
    table = Table(title=f"safe fetcher ({Path(pixpipe.__file__).parent})", title_justify="left")
    for column in ("scenario", "fetches", "fetches/s (best)", "CPU µs/fetch (best)",
                   "CPU µs/fetch (each round)"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for index, first in enumerate(rounds[0]):
        figures = [figures[index] for figures in rounds]
        table.add_row(first.scenario, str(first.fetches),
                      f"{max(f.per_second for f in figures):.0f}",
                      f"{min(f.cpu_us_per_fetch for f in figures):.0f}",
                      " ".join(f"{f.cpu_us_per_fetch:.0f}" for f in figures))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=corpus_dir() / "product-photos",
                        help="folder of .jpg photos (default: the shared product photos)")
    parser.add_argument("--count", type=int, default=400,
                        help="photo downloads per scenario; 404 scenarios make ten times as "
                             "many (default 400)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    photos = product_photos(args.photos)
    with serving(photos) as base_url:
        rounds = [asyncio.run(measure(base_url, photos, args.count)) for _ in range(args.repeat)]
    report(rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
