"""Copies of stored outputs, as reuse makes them: hard links on disk, server-side in S3."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixpipe import object_storage
from pixpipe.object_storage import S3Store
from pixpipe.storage import ImageStore
from tests.support.seaweedfs import BUCKET, SeaweedS3


def test_a_local_copy_is_a_link_that_outlives_its_source_request(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    store.write("r1/a.jpg", b"\xff\xd8output")
    assert store.copy("r1/a.jpg", "r2/b.jpg")
    source, copy = store.absolute_path("r1/a.jpg"), store.absolute_path("r2/b.jpg")
    assert source.stat().st_ino == copy.stat().st_ino
    # A retried job rewrites its own name only; retention removes a request's directory.
    store.write("r2/b.jpg", b"\xff\xd8rewritten")
    assert source.read_bytes() == b"\xff\xd8output"
    assert store.copy("r1/a.jpg", "r2/b.jpg")
    shutil.rmtree(tmp_path / "r1")
    assert copy.read_bytes() == b"\xff\xd8output"
    assert not store.copy("r1/a.jpg", "r3/c.jpg")
    assert not (tmp_path / "r3" / "c.jpg").exists()
    assert [path.name for path in (tmp_path / "r3").iterdir()] == []


@pytest.fixture
def s3_store(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    environment = s3_server.environment(prefix=f"reuse-{uuid.uuid4().hex[:8]}")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    object_storage._clients.clear()  # clients hold the credentials they were made with
    yield S3Store.from_url(environment["PIXPIPE_STORAGE_URL"],
                           endpoint_url=environment["PIXPIPE_S3_ENDPOINT_URL"],
                           cache_control="public, max-age=600")
    object_storage._clients.clear()


def test_an_s3_copy_is_server_side_with_the_source_headers(s3_store: S3Store,
                                                           s3_server: SeaweedS3) -> None:
    s3_store.write("r1/a.webp", b"RIFF....WEBPoutput")
    assert s3_store.copy("r1/a.webp", "r2/b.webp")
    assert s3_store.copy("r2/b.webp", "r2/b.webp")  # a retried job's own object
    client = s3_server.client()
    head = client.head_object(Bucket=BUCKET, Key=s3_store.key("r2/b.webp"))
    assert (head["ContentType"], head["CacheControl"]) == ("image/webp", "public, max-age=600")
    s3_store.delete(["r1/a.webp"])
    body = client.get_object(Bucket=BUCKET, Key=s3_store.key("r2/b.webp"))["Body"].read()
    assert body == b"RIFF....WEBPoutput"
    assert not s3_store.copy("r1/a.webp", "r3/c.webp")
    s3_store.delete(["r2/b.webp"])
