"""Runs the whole pixpipe stack on one machine (``make run``): NATS, migrations, services."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from pixpipe.db.migrate import upgrade
from pixpipe.embedded_nats import start_nats_server, wait_for_port
from pixpipe.settings import Settings, codec_processes_per_worker


@dataclass
class Stack:
    """The services as child processes sharing one environment of PIXPIPE_* settings."""

    settings: Settings
    workers: int = 2
    log_dir: Path | None = None
    environment: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # How each service was started (its module and environment), to start it again.
    _launches: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.environment,
               "PIXPIPE_DATA_DIR": str(settings.data_dir.resolve())}
        if not settings.nats_url:
            self.processes["nats"] = start_nats_server(
                port=settings.embedded_nats_port, store_dir=settings.data_dir / "jetstream",
                log_file=self._log_path("nats"))
            env["PIXPIPE_NATS_URL"] = f"nats://127.0.0.1:{settings.embedded_nats_port}"
        upgrade(settings.resolved_database_url)
        env["PIXPIPE_DATABASE_URL"] = settings.resolved_database_url
        try:
            self._spawn("ingest", "services.ingest.main", env)
            self._spawn("notifier", "services.notifier.main", env)
            worker_env = self.worker_environment(env)
            for index in range(self.workers):
                self._spawn(f"worker-{index + 1}", "services.worker.main", worker_env)
            self._spawn("gateway", "services.gateway.main", env)
            for port in (settings.ingest_port, settings.status_port, settings.gateway_port):
                self._wait_for(port)
        except BaseException:
            self.stop()
            raise

    def worker_environment(self, env: dict[str, str]) -> dict[str, str]:
        """The workers share this machine's cores: each is told how many Pillow processes to
        run unless PIXPIPE_CODEC_PROCESSES says."""
        share = codec_processes_per_worker(self.settings, workers_on_this_machine=self.workers)
        return {**env, "PIXPIPE_CODEC_PROCESSES": str(share)}

    def _log_path(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> None:
        self._launches[name] = (module, env)
        if self.settings.metrics_port and name != "gateway":
            # One host, several processes: each gets the next port after the configured one.
            offset = list(self._launches).index(name)
            env = {**env, "PIXPIPE_METRICS_PORT": str(self.settings.metrics_port + offset)}
        log_path = self._log_path(name)
        output = open(log_path, "ab") if log_path else None  # noqa: SIM115
        # A session of its own: Ctrl-C reaches only the stack, which stops the services in
        # order (NATS last) instead of every process dying at once.
        self.processes[name] = subprocess.Popen([sys.executable, "-m", module], env=env,
                                                stdout=output, stderr=subprocess.STDOUT
                                                if output else None, start_new_session=True)

    def _wait_for(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode}")
            try:
                wait_for_port(self.settings.bind_host, port, timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def kill(self, name: str) -> None:
        """SIGKILL one process, as a crash would."""
        process = self.processes[name]
        process.kill()
        process.wait()

    def restart(self, name: str) -> None:
        """Start a stopped or killed service again with the same settings."""
        if self.processes[name].poll() is None:
            self.processes[name].terminate()
            self.processes[name].wait(timeout=30)
        if name == "nats":
            self.processes[name] = start_nats_server(
                port=self.settings.embedded_nats_port,
                store_dir=self.settings.data_dir / "jetstream", log_file=self._log_path(name))
            return
        module, env = self._launches[name]
        self._spawn(name, module, env)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every service (NATS last), then wait; kill what does not stop in time."""
        ordered = [name for name in self.processes if name != "nats"]
        if "nats" in self.processes:
            ordered.append("nats")
        for group in (ordered[:-1], ordered[-1:]) if "nats" in ordered else (ordered,):
            for name in group:
                if self.processes[name].poll() is None:
                    self.processes[name].send_signal(signal.SIGTERM)
            for name in group:
                try:
                    self.processes[name].wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.processes[name].kill()
                    self.processes[name].wait()
        self.processes.clear()


def stop_on_signals() -> Callable[[], bool]:
    """Catch SIGINT and SIGTERM; the returned function says whether one has arrived."""
    received: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGINT, record)
    return lambda: bool(received)


def run_until_stopped(stack: Stack, stop_requested: Callable[[], bool]) -> None:
    """Keep the stack up until a signal arrives or one of its processes exits; then stop it."""
    try:
        while not stop_requested():
            exited = [(name, process.returncode) for name, process in stack.processes.items()
                      if process.poll() is not None]
            if exited:
                print(f"{exited[0][0]} exited with code {exited[0][1]}; stopping",
                      file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        print("stopping pixpipe…", flush=True)
        stack.stop()
        print("stopped.", flush=True)


def occupied_ports(settings: Settings) -> list[str]:
    """The ports the stack would listen on that something else already holds."""
    wanted = {"PIXPIPE_INGEST_PORT": (settings.bind_host, settings.ingest_port),
              "PIXPIPE_STATUS_PORT": (settings.bind_host, settings.status_port),
              "PIXPIPE_GATEWAY_PORT": (settings.bind_host, settings.gateway_port)}
    if not settings.nats_url:
        wanted["PIXPIPE_EMBEDDED_NATS_PORT"] = ("127.0.0.1", settings.embedded_nats_port)
    busy = []
    for variable, (host, port) in wanted.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # As the servers do: a port whose old connections linger is free to listen on.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                busy.append(f"{host}:{port} ({variable})")
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every pixpipe service on this machine.")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    settings = Settings()
    stack = Stack(settings=settings, workers=args.workers)
    busy = occupied_ports(settings)
    if busy:
        print(f"pixpipe cannot start: already in use: {', '.join(busy)}.\n"
              "Is pixpipe (or another server) already running? Stop it, or choose free "
              "ports with those variables.", file=sys.stderr)
        raise SystemExit(2)
    stop_requested = stop_on_signals()
    try:
        stack.start()
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"pixpipe failed to start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    host = settings.bind_host
    print("pixpipe is running:", flush=True)
    print(f"  REST gateway   http://{host}:{settings.gateway_port}  (docs: /docs)")
    print(f"  ingest gRPC    {host}:{settings.ingest_port}")
    print(f"  status gRPC    {host}:{settings.status_port}")
    print(f"  NATS           {settings.nats_url or f'nats://127.0.0.1:{settings.embedded_nats_port}'}")
    print(f"  database       {settings.resolved_database_url}")
    print(f"  workers        {args.workers}")
    print("Press Ctrl-C to stop.", flush=True)
    run_until_stopped(stack, stop_requested)


if __name__ == "__main__":
    main()
