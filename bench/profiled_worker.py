"""A pixpipe worker that times each stage of a job (``python -m bench.pipeline --profile``).

It runs ``pixpipe_services.worker.main`` unchanged after wrapping the stage functions with
wall-clock timers. SIGUSR1 writes the timings gathered since the last SIGUSR1 to
``$PIXPIPE_BENCH_PROFILE_DIR/<pid>.json`` and starts afresh, so the benchmark can leave the
warm-up out. Nothing here changes what the worker does, only how long each step is seen to take.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

from nats.aio.msg import Msg
from sqlalchemy import event
from sqlalchemy.engine import Engine

import pixpipe_services.worker.main as worker_main
import pixpipe_services.worker.processor as processor
from pixpipe.bus import Bus
from pixpipe.db.repository import Repository
from pixpipe.events import EventPublisher
from pixpipe.fetcher import SafeFetcher
from pixpipe_services.worker.consumer import JobConsumer
from pixpipe_services.worker.processor import CodecPool

PROFILE_DIR_VARIABLE = "PIXPIPE_BENCH_PROFILE_DIR"
# Comma-separated candidate fixes to try without touching the services (see EXPERIMENTS).
EXPERIMENTS_VARIABLE = "PIXPIPE_BENCH_EXPERIMENTS"
JOB_STAGE = "job (_settle, whole)"
LOOP_LAG_STAGE = "event-loop lag (10 ms timer)"
WRITE_LOCK_STAGE = "sqlite write lock held (first write → commit begins)"
_LAG_PERIOD = 0.010
_TABLES = frozenset({"images", "requests", "products", "webhook_deliveries"})

_timings: defaultdict[str, list[float]] = defaultdict(list)


def _timed(stage: str, function: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            _timings[stage].append(time.perf_counter() - started)
    return wrapper


def _wrap(owner: type, name: str, stage: str) -> None:
    setattr(owner, name, _timed(stage, getattr(owner, name)))


def _time_statements() -> None:
    """Wall time of each SQL statement, waits for the SQLite lock included (every engine),
    and how long a transaction holds SQLite's write lock (its first write to its commit)."""
    locked_at: dict[int, float] = {}

    def before(conn: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any,
               _executemany: bool) -> None:
        context._bench_started = time.perf_counter()

    def after(conn: Any, _cursor: Any, statement: str, _parameters: Any, context: Any,
              _executemany: bool) -> None:
        now = time.perf_counter()
        words = statement.split()
        verb = words[0].upper()
        table = next((word for word in words[1:6] if word in _TABLES), "?")
        _timings[f"sql {verb} {table}"].append(now - context._bench_started)
        if verb in ("INSERT", "UPDATE", "DELETE"):
            locked_at.setdefault(id(conn.connection.dbapi_connection), now)

    def committing(conn: Any) -> None:
        first_write = locked_at.pop(id(conn.connection.dbapi_connection), None)
        if first_write is not None:
            _timings[WRITE_LOCK_STAGE].append(time.perf_counter() - first_write)

    def rolling_back(conn: Any) -> None:
        locked_at.pop(id(conn.connection.dbapi_connection), None)

    # Engine-wide: the workers' writes run on the TransactionRunner's synchronous engine,
    # reads and uploads on the async one.
    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    event.listen(Engine, "commit", committing)
    event.listen(Engine, "rollback", rolling_back)


def _null_store(source: bytes, options: object, store: object, request_id: str,
                image_id: str) -> processor.StoredImage:
    """Runs in a codec process instead of Pillow: what the worker costs around the codec."""
    return processor.StoredImage(relative_path=f"{request_id}/{image_id}.jpg",
                                 bytes_out=len(source) // 10, width=1, height=1)


def _null_codec() -> None:
    """Replace the transform with a no-op (same hand-off of the source bytes), so the
    worker's own CPU per image can be measured without Pillow competing for the cores."""
    processor.transform_and_store = _null_store


EXPERIMENTS: dict[str, Callable[[], None]] = {"null-codec": _null_codec}


def _install() -> None:
    for name in filter(None, os.environ.get(EXPERIMENTS_VARIABLE, "").split(",")):
        EXPERIMENTS[name.strip()]()
    _wrap(JobConsumer, "_settle", JOB_STAGE)
    _wrap(Repository, "start_image", "repository.start_image")
    _wrap(Repository, "finish_image", "repository.finish_image")
    _wrap(Repository, "get_request", "repository.get_request")
    _wrap(EventPublisher, "image_changed", "events.image_changed (all)")
    _wrap(EventPublisher, "request_finished", "events.request_finished")
    _wrap(Bus, "publish_event", "bus.publish_event")
    _wrap(SafeFetcher, "fetch", "fetcher.fetch")
    _wrap(CodecPool, "transform_and_store", "codec.transform_and_store (queue + Pillow + write)")
    _wrap(Msg, "ack", "message.ack")

    _time_statements()

    run = JobConsumer.run

    async def run_with_lag_probe(self: JobConsumer, stop: asyncio.Event) -> None:
        probe = asyncio.create_task(_probe_loop_lag())
        try:
            await run(self, stop)
        finally:
            probe.cancel()

    JobConsumer.run = run_with_lag_probe  # type: ignore[method-assign]


async def _probe_loop_lag() -> None:
    # How late a 10 ms timer fires: time every ready callback waits for the loop's thread.
    while True:
        started = time.perf_counter()
        await asyncio.sleep(_LAG_PERIOD)
        _timings[LOOP_LAG_STAGE].append(time.perf_counter() - started - _LAG_PERIOD)


def _dump(_signum: int, _frame: FrameType | None) -> None:
    directory = Path(os.environ[PROFILE_DIR_VARIABLE])
    snapshot = {stage: list(values) for stage, values in _timings.items()}
    _timings.clear()
    temporary = directory / f".{os.getpid()}.json"
    temporary.write_text(json.dumps(snapshot))
    temporary.replace(directory / f"{os.getpid()}.json")


def main() -> None:
    Path(os.environ[PROFILE_DIR_VARIABLE]).mkdir(parents=True, exist_ok=True)
    _install()
    signal.signal(signal.SIGUSR1, _dump)
    worker_main.main()


if __name__ == "__main__":
    main()
