"""Entry point of the REST gateway (``pixpipe-gateway``)."""

from __future__ import annotations

import uvicorn

from pixpipe.runtime import configure_logging
from pixpipe.settings import Settings
from services.gateway.app import create_app


def main() -> None:
    settings = Settings()
    configure_logging(settings, "gateway")
    uvicorn.run(create_app(settings), host=settings.bind_host, port=settings.gateway_port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
