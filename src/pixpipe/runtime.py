"""Process plumbing shared by the service entry points: logging and signal-driven shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pixpipe.settings import ObservabilitySettings, Settings
from pixpipe.tracing import configure_tracing


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time, service, level, logger, message,
    and the traceback when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "service": self._service, "level": record.levelname, "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def start_service_process(settings: Settings, service: str) -> None:
    """What every service does first: its logging, its tracing (off unless PIXPIPE_TRACING
    says), and its tie to the process that started it, if it has one."""
    configure_logging(settings.observability, service)
    configure_tracing(f"pixpipe-{service}", settings.observability.tracing)
    if settings.lifecycle.exit_with_parent_pid:
        exit_with_parent(settings.lifecycle.exit_with_parent_pid)


_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when ``parent_pid``, which started it, dies (Linux; elsewhere a
    no-op). The dev stack's services run in sessions of their own, so nothing else would
    reach them if the stack were killed: they would live on, pulling jobs from a shared queue
    into a database no one reads.

    Set here, after exec, rather than between fork and exec: a parent holding gRPC threads
    (a test runner) must not run Python code in a forked child (gRPC aborted it there)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def configure_logging(observability: ObservabilitySettings, service: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(service) if observability.log_format == "json" else
                         logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: "
                                           "%(message)s"))
    logging.basicConfig(level=observability.log_level.upper(), handlers=[handler])
    # A line per download or webhook POST drowns the service's own log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; SIGINT or SIGTERM sets ``stop`` so it can shut down gracefully."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile: a periodic task's pause."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
