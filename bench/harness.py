"""What every benchmark run shares: its console, a scratch directory, a fresh database, and
the difference between a run that broke and a figure that missed its target."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import grpc
import httpx
from rich.console import Console
from sqlalchemy.engine import make_url

console = Console(highlight=False)
if not console.is_terminal:
    console.width = max(console.width, 110)  # a log file: keep the tables on one line each


class BenchError(Exception):
    """The run itself broke (images failed, a service died, a request never finished)."""


# What ends a run as broken; anything else is a bug in the benchmark and is raised.
BROKEN_RUN = (BenchError, grpc.RpcError, httpx.HTTPError, RuntimeError, TimeoutError)


def print_logs(log_dir: Path, tail: int = 3000) -> None:
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text(errors="replace")[-tail:]
        console.print(f"[bold]--- {path.name}[/bold] (last {tail} characters)", markup=True)
        console.print(text, markup=False, soft_wrap=True)


def run_benchmark(prefix: str, body: Callable[[Path], None], *, keep: bool = False) -> int:
    """Run ``body`` in a new scratch directory; the exit status of the benchmark.

    A benchmark exits non-zero only when the run itself broke: then it prints the services'
    logs (any ``logs`` folder in the directory) and keeps the directory for a look. A figure
    that misses its target is a result, printed by ``body``, not a failure.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    broke = True
    try:
        body(root)
        broke = False
        return 0
    except BROKEN_RUN as error:
        console.print(f"[red]benchmark broke:[/red] {error}")
        for log_dir in sorted({*root.glob("logs"), *root.glob("*/logs")}):
            print_logs(log_dir)
        return 1
    finally:
        if broke or keep:
            console.print(f"data directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _admin(server_url: str, statement: str) -> None:
    url = make_url(server_url)
    connection = await asyncpg.connect(
        host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres",
        password=url.password, database=url.database or "postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the PostgreSQL server of ``server_url``, dropped afterwards, so a
    benchmark never measures (or leaves) another run's rows."""
    name = f"pixpipe_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
