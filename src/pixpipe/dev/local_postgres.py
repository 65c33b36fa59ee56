"""A PostgreSQL cluster of our own (initdb + pg_ctl): for `make cluster` and fault tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pixpipe.dev.embedded_nats import free_port, wait_for_port


def postgres_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@dataclass
class ThrowawayPostgres:
    bin_dir: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/pixpipe"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        # PostgreSQL refuses to run as root; CI and developers' machines here are root.
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        if finished.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {finished.stderr.strip()}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 "
                  f"-k {self.data_dir} -c fsync=off", "start")
        wait_for_port("127.0.0.1", self.port)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def throwaway_postgres(root: Path | None = None, *, keep: bool = False,
                       ) -> Iterator[ThrowawayPostgres]:
    """initdb a new cluster under ``root`` (a temporary directory by default), start it,
    create database ``pixpipe``; stop it afterwards and, unless ``keep``, delete it."""
    bin_dir = postgres_binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL (initdb, pg_ctl) is not installed")
    root = root or Path(tempfile.mkdtemp(prefix="pixpipe-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data_dir, "postgres")
    server = ThrowawayPostgres(bin_dir=bin_dir, data_dir=data_dir, port=free_port())
    server._run("initdb", "-D", str(data_dir), "-U", "postgres", "--auth=trust",
                "--no-sync", "-E", "UTF8")
    server.start()
    try:
        server._run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
                    "pixpipe")
        yield server
    finally:
        try:
            server.stop("fast" if keep else "immediate")
        finally:
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
