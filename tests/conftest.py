"""Session-wide real services: NATS JetStream, a database, a corpus HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.infrastructure import NatsServer, database_for_tests, nats_for_tests
from tests.support.paths import corpus_root
from tests.support.seaweedfs import s3_server  # noqa: F401  (a session fixture)

CORPUS_DIR = corpus_root()


def pytest_report_header() -> list[str]:
    import os

    return [f"pixpipe database: {os.environ.get('PIXPIPE_TEST_DATABASE_URL') or 'SQLite'}",
            f"pixpipe NATS: {os.environ.get('PIXPIPE_TEST_NATS_URL') or 'own nats-server'}"]


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (CORPUS_DIR / "products.csv").exists():
        pytest.fail(f"test corpus not found at {CORPUS_DIR}")
    return CORPUS_DIR


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with nats_for_tests(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with database_for_tests(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI's PostgreSQL run a skipped test is a failure: nothing may silently not run."""
    import os

    if os.environ.get("PIXPIPE_TEST_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        if reporter:
            reporter.write_line(f"FAIL: {skipped} test(s) skipped in a run that must skip none",
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
