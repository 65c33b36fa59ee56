"""End-to-end fixtures: the whole stack as child processes, images served from loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faults import FaultOutcome
from tests.support.http_server import CorpusHttpServer
from tests.support.infrastructure import NatsServer
from tests.support.stack import RunningStack, stack_in


@pytest.fixture(scope="session")
def corpus_server(corpus_dir: Path) -> Iterator[CorpusHttpServer]:
    with CorpusHttpServer(corpus_dir) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
          nats_server: NatsServer) -> Iterator[RunningStack]:
    with stack_in(tmp_path_factory, "stack", database_url=database_url,
                  nats_url=nats_server.url) as running:
        yield running


_CHAOS_REPORT: list[FaultOutcome] = []


@pytest.fixture(scope="session")
def chaos_report() -> list[FaultOutcome]:
    """Fault tests add a row each; the summary table is printed at the end of the run."""
    return _CHAOS_REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _CHAOS_REPORT:
        return
    write = terminalreporter.write_line
    terminalreporter.section("pixpipe fault runs")
    write(f"{'fault':<44} {'images':>7} {'seconds':>8} {'lost':>5} {'duplicated':>10}")
    for row in _CHAOS_REPORT:
        write(f"{row.fault:<44} {row.images:>7} {row.seconds:>8.1f} {row.lost:>5} "
              f"{row.duplicated:>10}")
    for row in _CHAOS_REPORT:
        if row.note:
            write(f"{row.fault}: {row.note}")
