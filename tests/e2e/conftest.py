"""End-to-end fixtures: the whole stack as child processes, images served from loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http_server import CorpusHttpServer
from tests.support.infrastructure import NatsServer
from tests.support.stack import RunningStack, running_stack, stack_settings


@pytest.fixture(scope="session")
def corpus_server(corpus_dir: Path) -> Iterator[CorpusHttpServer]:
    with CorpusHttpServer(corpus_dir) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
          nats_server: NatsServer) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("stack")
    environment = stack_settings(data_dir, database_url=database_url, nats_url=nats_server.url)
    with running_stack(data_dir, environment, workers=2) as running:
        yield running
