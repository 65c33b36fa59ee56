"""A real S3 server for tests: the SeaweedFS of ``pixpipe.dev.seaweedfs``, no mocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pixpipe.dev.seaweedfs import BUCKET, SeaweedS3, seaweed_s3

__all__ = ["BUCKET", "SeaweedS3", "s3_server", "seaweed_s3"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the session, started on first use; tests use their own prefixes."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
