"""Entry point of the REST gateway (``pixpipe-gateway``)."""

from __future__ import annotations

import logging

import uvicorn

from pixpipe.object_storage import StorageMisconfigured
from pixpipe.runtime import start_service_process
from pixpipe.settings import Settings
from pixpipe.storage import s3_store_from_settings
from pixpipe_services.gateway.app import create_app


def main() -> None:
    settings = Settings()
    start_service_process(settings, "gateway")
    store = s3_store_from_settings(settings.storage)
    if store is not None:
        try:
            store.check()
        except StorageMisconfigured as error:
            logging.getLogger(__name__).error("cannot start: object storage %s", error)
            raise SystemExit(2) from None
    uvicorn.run(create_app(settings), host=settings.network.bind_host,
                port=settings.network.gateway_port,
                log_level=settings.observability.log_level.lower(), timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
