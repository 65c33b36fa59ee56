"""Process plumbing shared by the service entry points: logging and signal-driven shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pixpipe.settings import Settings


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


def configure_logging(settings: Settings, service: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter(service) if settings.log_format == "json" else
                         logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: "
                                           "%(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
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
