"""``make cluster``: a three-node NATS JetStream cluster, PostgreSQL and N workers, locally."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from pixpipe.dev.local_postgres import throwaway_postgres
from pixpipe.dev.nats_cluster import nats_cluster
from pixpipe.settings import Settings
from pixpipe.stack import Stack


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """PIXPIPE_DATABASE_URL when set; otherwise a PostgreSQL cluster of our own."""
    if settings.database_url:
        yield settings.database_url
        return
    # Its own temporary directory: the postgres user must be able to reach it.
    with throwaway_postgres() as postgres:
        yield postgres.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    base = Settings()
    stopping = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    root = Path(tempfile.mkdtemp(prefix="pixpipe-cluster-"))
    with nats_cluster(root / "nats") as cluster, database(base) as url:
        settings = base.model_copy(update={"nats_url": cluster.url, "database_url": url,
                                           "stream_replicas": 3})
        stack = Stack(settings=settings, workers=args.workers, log_dir=root / "logs",
                      environment={"PIXPIPE_NATS_URL": cluster.url,
                                   "PIXPIPE_DATABASE_URL": url,
                                   "PIXPIPE_STREAM_REPLICAS": "3"})
        stack.start()
        print("pixpipe cluster is running:")
        for node in cluster.nodes:
            print(f"  NATS {node.name}        nats://127.0.0.1:{node.client_port}")
        print(f"  PostgreSQL     {url}")
        print(f"  workers        {args.workers}")
        print(f"  REST gateway   http://{settings.bind_host}:{settings.gateway_port}")
        print(f"  logs           {root / 'logs'}")
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while not stopping:
                time.sleep(0.5)
        finally:
            stack.stop()
    print("stopped.", file=sys.stderr)


if __name__ == "__main__":
    main()
