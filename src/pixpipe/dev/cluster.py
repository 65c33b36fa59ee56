"""``make cluster``: a three-node NATS JetStream cluster, PostgreSQL, S3 and N workers, locally.

Each worker has a data directory of its own and the outputs go to object storage (a local
SeaweedFS unless PIXPIPE_STORAGE_URL names another), so nothing relies on a shared disk.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pixpipe.dev.local_postgres import throwaway_postgres
from pixpipe.dev.nats_cluster import nats_cluster
from pixpipe.dev.seaweedfs import seaweed_s3
from pixpipe.dev.stack import Stack, run_until_stopped, stop_on_signals
from pixpipe.dev.webhook_secret import NATS_TOKEN_FILE_NAME, install_nats_token
from pixpipe.settings import Settings, StorageSettings


@contextlib.contextmanager
def database(storage: StorageSettings) -> Iterator[str]:
    """PIXPIPE_DATABASE_URL when set; otherwise a PostgreSQL cluster of our own."""
    if storage.database_url:
        yield storage.database_url
        return
    # Its own temporary directory: the postgres user must be able to reach it.
    with throwaway_postgres() as postgres:
        yield postgres.url


@contextlib.contextmanager
def object_storage(storage: StorageSettings, root: Path) -> Iterator[dict[str, str]]:
    """PIXPIPE_STORAGE_URL when set (with the AWS_* of the environment); else a SeaweedFS."""
    if storage.url:
        yield {}
        return
    with seaweed_s3(root) as server:
        yield server.environment(prefix="processed_images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    base = Settings()
    stop_requested = stop_on_signals()
    root = Path(tempfile.mkdtemp(prefix="pixpipe-cluster-"))
    nats_token = base.nats.token or install_nats_token(root)[0]
    with (nats_cluster(root / "nats", token=nats_token) as cluster,
          database(base.storage) as url, object_storage(base.storage, root / "s3") as storage):
        settings = base.updated(nats_url=cluster.url, database_url=url, stream_replicas=3,
                                nats_token=nats_token)
        stack = Stack(settings=settings, workers=args.workers, log_dir=root / "logs",
                      environment={"PIXPIPE_NATS_URL": cluster.url,
                                   "PIXPIPE_NATS_TOKEN": nats_token,
                                   "PIXPIPE_DATABASE_URL": url,
                                   "PIXPIPE_STREAM_REPLICAS": "3", **storage},
                      separate_worker_data_dirs=True)
        stack.start()
        print("pixpipe cluster is running:")
        for node in cluster.nodes:
            print(f"  NATS {node.name}        nats://127.0.0.1:{node.client_port}  (token in "
                  f"{root / NATS_TOKEN_FILE_NAME})")
        print(f"  PostgreSQL     {url}")
        print(f"  workers        {args.workers}, each with its own data directory")
        print(f"  object storage {storage.get('PIXPIPE_STORAGE_URL') or settings.storage.url}"
              + (f" at {storage['PIXPIPE_S3_ENDPOINT_URL']}" if storage else ""))
        network = settings.network
        print(f"  REST gateway   http://{network.bind_host}:{network.gateway_port}")
        print(f"  logs           {root / 'logs'}")
        print("Press Ctrl-C to stop.", flush=True)
        run_until_stopped(stack, stop_requested)


if __name__ == "__main__":
    main()
