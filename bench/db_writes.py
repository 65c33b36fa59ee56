"""The worker's database writes per image on their own: ``python -m bench.db_writes``.

Runs ``Repository.start_image`` then ``finish_image`` for every image of one request, as a
worker does, on a fresh SQLite database in a temporary directory, with nothing else
running. Prints wall and CPU time per image: the floor the database puts under the pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bench.corpus import corpus_dir, load_photos, products_csv
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.engine import create_engine, session_factory
from pixpipe.db.migrate import upgrade
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageJob, ImageSuccess, RequestOptions

_DONE = ImageSuccess(output_path="bench/image.jpg", bytes_in=300_000, bytes_out=30_000,
                     width=640, height=480)


async def record(url: str, images: int, concurrency: int) -> tuple[float, float]:
    """Seconds of wall and CPU time (every thread of this process) per image."""
    engine = create_engine(url)
    repository = Repository(session_factory(engine))
    try:
        parsed = parse_products_csv(products_csv("http://127.0.0.1:9", load_photos(corpus_dir()),
                                                 images))
        _request_id, jobs = await repository.create_request(
            parsed, options=RequestOptions(), webhook_url=None, file_name="bench.csv")
        slots = asyncio.Semaphore(concurrency)

        async def one(job: ImageJob) -> None:
            async with slots:
                await repository.start_image(job.image_id, worker="bench")
                await repository.finish_image(job.image_id, _DONE)

        cpu_started, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(job) for job in jobs))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await engine.dispose()
    return wall / images, cpu / images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.db_writes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8],
                        help="jobs at once, as PIXPIPE_WORKER_CONCURRENCY (default: 1 8)")
    args = parser.parse_args(argv)
    for concurrency in args.concurrency:
        data_dir = Path(tempfile.mkdtemp(prefix="pixpipe-bench-db-"))
        try:
            url = f"sqlite+aiosqlite:///{data_dir / 'pixpipe.db'}"
            upgrade(url)  # before the event loop: the migrations run their own
            wall, cpu = asyncio.run(record(url, args.images, concurrency))
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        print(f"concurrency {concurrency}: start_image + finish_image per image: "
              f"{wall * 1000:.2f} ms wall, {cpu * 1000:.2f} ms CPU "
              f"(one process records at most {1 / wall:.0f} images/s)")


if __name__ == "__main__":
    main()
