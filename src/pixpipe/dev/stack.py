"""Runs the whole pixpipe stack on one machine (``make run``): NATS, migrations, services."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from pixpipe.db.migrate import upgrade
from pixpipe.dev.embedded_nats import (
    start_nats_server,
    start_nats_server_on_free_port,
    token_arguments,
)
from pixpipe.dev.webhook_secret import install_nats_token, install_webhook_secret
from pixpipe.retry import doubling_delay
from pixpipe.settings import NatsSettings, Settings, codec_processes_per_worker

# How often the stack looks at its processes and, while starting, asks the gateway /readyz.
_POLL_SECONDS = 0.2


class StartInterrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was starting."""


def embedded_nats_port_is_fixed(nats: NatsSettings) -> bool:
    """Whether PIXPIPE_EMBEDDED_NATS_PORT was given; unset (or 0), the server picks a port."""
    return "embedded_port" in nats.model_fields_set and nats.embedded_port != 0


@dataclass
class Stack:
    """The services as child processes sharing one environment of PIXPIPE_* settings."""

    settings: Settings
    workers: int = 2
    log_dir: Path | None = None
    environment: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # When each process was started, to tell a crash loop from a stable run.
    started_at: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    # Ctrl-C or SIGTERM while starting: stop waiting for readiness (see stop_on_signals).
    stop_requested: Callable[[], bool] = lambda: False
    # The install's generated webhook secret, when PIXPIPE_WEBHOOK_SECRET did not set one.
    webhook_secret: str | None = None
    webhook_secret_file: Path | None = None
    # The embedded NATS server's generated token, when it has one of ours.
    nats_token: str | None = None
    # The embedded server's port once started: kept across its restarts.
    nats_port: int | None = None
    # Each worker under <data dir>/worker-N, so nothing can rely on a disk they share.
    separate_worker_data_dirs: bool = False
    # How each service was started (its module and environment), to start it again.
    _launches: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def start(self) -> None:
        """Start every service and return once the gateway's /readyz answers 200."""
        settings = self.settings
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.environment,
               "PIXPIPE_DATA_DIR": str(settings.storage.data_dir.resolve())}
        if not settings.webhooks.secret:
            # Never a well-known default: this install's own, kept beside its data.
            self.webhook_secret, self.webhook_secret_file = install_webhook_secret(
                settings.storage.data_dir)
            env["PIXPIPE_WEBHOOK_SECRET"] = self.webhook_secret
        try:
            if not settings.nats.url:
                if not settings.nats.token:
                    self.nats_token, _ = install_nats_token(settings.storage.data_dir)
                    env["PIXPIPE_NATS_TOKEN"] = self.nats_token
                self._start_embedded_nats()
                env["PIXPIPE_NATS_URL"] = self.nats_url
                env["PIXPIPE_EMBEDDED_NATS_PORT"] = str(self.nats_port)
            upgrade(settings.storage.resolved_database_url)
            env["PIXPIPE_DATABASE_URL"] = settings.storage.resolved_database_url
            self._spawn("ingest", "pixpipe_services.ingest.main", env)
            self._spawn("notifier", "pixpipe_services.notifier.main", env)
            worker_env = self.worker_environment(env)
            for index in range(self.workers):
                name = f"worker-{index + 1}"
                if self.separate_worker_data_dirs:
                    own = settings.storage.data_dir.resolve() / name
                    own.mkdir(exist_ok=True)
                    self._spawn(name, "pixpipe_services.worker.main",
                                {**worker_env, "PIXPIPE_DATA_DIR": str(own)})
                else:
                    self._spawn(name, "pixpipe_services.worker.main", worker_env)
            self._spawn("gateway", "pixpipe_services.gateway.main", env)
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def nats_url(self) -> str:
        """The broker the services use: the configured one, or the embedded server."""
        if self.settings.nats.url:
            return self.settings.nats.url
        assert self.nats_port is not None, "the embedded NATS server is not started"
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def gateway_url(self) -> str:
        # A service bound to every interface is reached on loopback.
        network = self.settings.network
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(  # noqa: S104  (a lookup, binds nothing)
            network.bind_host, network.bind_host)
        return f"http://{f'[{host}]' if ':' in host else host}:{network.gateway_port}"

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Wait for the gateway's /readyz to answer 200; fail if a service exits first."""
        # The services themselves wait this long for JetStream before they give up.
        timeout = timeout or self.settings.nats.startup_wait_seconds + 30.0
        deadline = time.monotonic() + timeout
        answer = "no answer yet"
        with httpx.Client(timeout=5.0) as client:
            while True:
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} exited with code {process.returncode}")
                if self.stop_requested():
                    raise StartInterrupted
                try:
                    response = client.get(f"{self.gateway_url}/readyz")
                    if response.status_code == 200:
                        return
                    answer = f"{response.status_code} {response.text}"
                except httpx.TransportError as error:
                    answer = f"{type(error).__name__}: {error}"
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready after {timeout:.0f} s: "
                                       f"{self.gateway_url}/readyz said {answer}")
                time.sleep(_POLL_SECONDS)

    def worker_environment(self, env: dict[str, str]) -> dict[str, str]:
        """The workers share this machine's cores: each is told how many Pillow processes to
        run unless PIXPIPE_CODEC_PROCESSES says."""
        share = codec_processes_per_worker(self.settings.codec,
                                           workers_on_this_machine=self.workers)
        return {**env, "PIXPIPE_CODEC_PROCESSES": str(share)}

    def _log_path(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def _start_embedded_nats(self) -> None:
        store_dir = self.settings.storage.data_dir / "jetstream"
        port = self.nats_port or (self.settings.nats.embedded_port
                                  if embedded_nats_port_is_fixed(self.settings.nats) else None)
        token = token_arguments(self.settings.nats.token or self.nats_token)
        if port is None:
            # A NATS server of some other project may well hold 4222 on this machine.
            process, port = start_nats_server_on_free_port(
                store_dir=store_dir, log_file=self._log_path("nats"), extra=token)
        else:
            process = start_nats_server(port=port, store_dir=store_dir,
                                        log_file=self._log_path("nats"), extra=token)
        self.processes["nats"] = process
        self.started_at["nats"] = self.clock()
        self.nats_port = port

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> None:
        self._launches[name] = (module, env)
        metrics_port = self.settings.observability.metrics_port
        if metrics_port and name != "gateway":
            # One host, several processes: each gets the next port after the configured one.
            offset = list(self._launches).index(name)
            env = {**env, "PIXPIPE_METRICS_PORT": str(metrics_port + offset)}
        if threading.current_thread() is threading.main_thread():
            # The service stops if the stack dies. The kernel signals when the *thread* that
            # started a child ends, and only the main thread lives as long as the process.
            env = {**env, "PIXPIPE_EXIT_WITH_PARENT_PID": str(os.getpid())}
        log_path = self._log_path(name)
        output = open(log_path, "ab") if log_path else None  # noqa: SIM115
        # A session of its own: Ctrl-C reaches only the stack, which stops the services in
        # order (NATS last) instead of every process dying at once.
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=output,
            stderr=subprocess.STDOUT if output else None, start_new_session=True)
        self.started_at[name] = self.clock()
        if output is not None:
            output.close()  # the service holds its own copy

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
            self._start_embedded_nats()  # the same port and store directory
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


@dataclass(frozen=True)
class RestartBackoff:
    """How long a crashed service waits before it is started again.

    The delay doubles with each crash in a row, from ``first`` up to ``cap``, so a service
    that cannot start (its database down, say) does not spin; a service that had run for
    ``stable_after`` seconds before it crashed starts the count again.
    """

    first: float = 0.5
    cap: float = 30.0
    stable_after: float = 60.0

    def delay(self, crashes_in_a_row: int) -> float:
        return doubling_delay(crashes_in_a_row, first=self.first, cap=self.cap)


class Supervisor:
    """Starts the stack's crashed processes again, each after its backoff; call ``check``."""

    def __init__(self, stack: Stack, backoff: RestartBackoff | None = None) -> None:
        self.stack = stack
        self.backoff = backoff or RestartBackoff()
        self._crashes: dict[str, int] = {}
        self._due: dict[str, float] = {}  # restarts waiting for their time

    def check(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Notice the processes that exited, and restart those whose backoff has passed."""
        now = self.stack.clock()
        for name, process in self.stack.processes.items():
            if name in self._due or process.poll() is None:
                continue
            ran = now - self.stack.started_at.get(name, now)
            crashes = 1 if ran >= self.backoff.stable_after else self._crashes.get(name, 0) + 1
            self._crashes[name] = crashes
            delay = self.backoff.delay(crashes)
            self._due[name] = now + delay
            _report(f"{name} exited with code {describe_exit(process.returncode)} after "
                    f"{ran:.1f} s; restarting it in {delay:.1f} s"
                    + (f" ({crashes} crashes in a row)" if crashes > 1 else ""))
        for name, due in list(self._due.items()):
            if due > now or stop_requested():
                continue
            del self._due[name]
            try:
                self.stack.restart(name)
            except (OSError, RuntimeError, TimeoutError) as error:
                # Counted as another crash at the next check: the old process is still dead.
                self.stack.started_at[name] = self.stack.clock()
                _report(f"{name} did not start again: {error}")
            else:
                _report(f"{name} restarted (pid {self.stack.processes[name].pid})")


def describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"{returncode} ({signal.Signals(-returncode).name})"
    return str(returncode)


def _report(message: str) -> None:
    print(f"pixpipe: {message}", file=sys.stderr, flush=True)


def run_until_stopped(stack: Stack, stop_requested: Callable[[], bool],
                      backoff: RestartBackoff | None = None) -> None:
    """Keep the stack up, restarting what crashes, until a signal arrives; then stop it."""
    supervisor = Supervisor(stack, backoff)
    try:
        while not stop_requested():
            supervisor.check(stop_requested)
            time.sleep(_POLL_SECONDS)
    finally:
        print("stopping pixpipe…", flush=True)
        stack.stop()
        print("stopped.", flush=True)


def occupied_ports(settings: Settings) -> list[str]:
    """The ports the stack would listen on that something else already holds."""
    network = settings.network
    wanted = {"PIXPIPE_INGEST_PORT": (network.bind_host, network.ingest_port),
              "PIXPIPE_STATUS_PORT": (network.bind_host, network.status_port),
              "PIXPIPE_GATEWAY_PORT": (network.bind_host, network.gateway_port)}
    if not settings.nats.url and embedded_nats_port_is_fixed(settings.nats):
        wanted["PIXPIPE_EMBEDDED_NATS_PORT"] = ("127.0.0.1", settings.nats.embedded_port)
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
    busy = occupied_ports(settings)
    if busy:
        print(f"pixpipe cannot start: already in use: {', '.join(busy)}.\n"
              "Is pixpipe (or another server) already running? Stop it, or choose free "
              "ports with those variables.", file=sys.stderr)
        raise SystemExit(2)
    stop_requested = stop_on_signals()
    stack = Stack(settings=settings, workers=args.workers, stop_requested=stop_requested)
    try:
        stack.start()
    except StartInterrupted:
        print("stopped.", flush=True)
        return
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"pixpipe failed to start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    host = settings.network.bind_host
    print("pixpipe is running:", flush=True)
    print(f"  REST gateway   http://{host}:{settings.network.gateway_port}  (docs: /docs, "
          "readiness: /readyz)")
    print(f"  ingest gRPC    {host}:{settings.network.ingest_port}")
    print(f"  status gRPC    {host}:{settings.network.status_port}")
    token_note = "  (token required: kept in the data dir)" if stack.nats_token else ""
    print(f"  NATS           {stack.nats_url}{token_note}")
    print(f"  database       {settings.storage.resolved_database_url}")
    print(f"  workers        {args.workers}")
    if stack.webhook_secret_file is not None:
        print(f"  webhook secret {stack.webhook_secret}  (kept in {stack.webhook_secret_file})")
    print("Press Ctrl-C to stop.", flush=True)
    run_until_stopped(stack, stop_requested)


if __name__ == "__main__":
    main()
