"""S3Store and the gateway's /processed_images route against a real SeaweedFS."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pixpipe import object_storage
from pixpipe.object_storage import S3Store, StorageMisconfigured, StorageUnavailable
from pixpipe.settings import Settings
from pixpipe_services.gateway.app import create_app
from tests.support.seaweedfs import BUCKET, SeaweedS3


@pytest.fixture
def s3_environment(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch,
                   ) -> Iterator[dict[str, str]]:
    environment = s3_server.environment(prefix=f"it-{uuid.uuid4().hex[:8]}")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    object_storage._clients.clear()  # clients hold the credentials they were made with
    yield environment
    object_storage._clients.clear()


def _store(environment: dict[str, str], **kwargs: object) -> S3Store:
    return S3Store.from_url(environment["PIXPIPE_STORAGE_URL"],
                            endpoint_url=environment["PIXPIPE_S3_ENDPOINT_URL"],
                            **kwargs)


def test_storage_url_parts() -> None:
    store = S3Store.from_url("s3://images/pixpipe/out/")
    assert (store.bucket, store.prefix) == ("images", "pixpipe/out")
    assert store.key("r/i.webp") == "pixpipe/out/r/i.webp"
    assert S3Store.from_url("s3://images").key("r/i.jpg") == "r/i.jpg"
    assert object_storage.content_type("r/i.avif") == "image/avif"
    with pytest.raises(ValueError, match="s3://bucket"):
        Settings(storage_url="/var/images")


def test_writes_small_and_multipart_objects_with_headers(s3_environment: dict[str, str],
                                                         s3_server: SeaweedS3) -> None:
    store = _store(s3_environment, multipart_threshold=5 * 1024 * 1024,
                   cache_control="public, max-age=600")
    store.check()
    big = os.urandom(11 * 1024 * 1024)  # three parts of 5 MB, 5 MB and 1 MB
    store.write("r1/small.jpg", b"\xff\xd8small")
    store.write("r1/big.webp", big)

    client = s3_server.client()
    small = client.head_object(Bucket=BUCKET, Key=store.key("r1/small.jpg"))
    assert (small["ContentType"], small["CacheControl"]) == ("image/jpeg", "public, max-age=600")
    head = client.head_object(Bucket=BUCKET, Key=store.key("r1/big.webp"))
    assert head["ContentType"] == "image/webp"
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    body = client.get_object(Bucket=BUCKET, Key=store.key("r1/big.webp"))["Body"].read()
    assert body == big

    store.delete(["r1/small.jpg", "r1/big.webp"])
    assert s3_server.object_keys(prefix=store.prefix) == []


def test_misconfiguration_is_named_at_check(s3_environment: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageMisconfigured, match="bucket 'no-such-bucket' does not exist"):
        S3Store("no-such-bucket", "", endpoint_url=s3_environment[
            "PIXPIPE_S3_ENDPOINT_URL"]).check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    object_storage._clients.clear()
    with pytest.raises(StorageMisconfigured, match="access denied"):
        _store(s3_environment).check()
    object_storage._clients.clear()
    closed = S3Store(BUCKET, "", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageMisconfigured, match=r"127\.0\.0\.1:9"):
        closed.check()
    with pytest.raises(StorageUnavailable, match="upload failed"):
        closed.write("r/i.jpg", b"x")


@pytest.mark.parametrize("serve", ["redirect", "proxy"])
def test_gateway_serves_objects(s3_environment: dict[str, str], serve: str,
                                tmp_path: Path) -> None:
    store = _store(s3_environment)
    request_id, image_id = uuid.uuid4(), uuid.uuid4().hex
    path = f"{request_id}/{image_id}.jpg"
    store.write(path, b"\xff\xd8jpeg bytes")
    settings = Settings(data_dir=tmp_path, storage_url=s3_environment["PIXPIPE_STORAGE_URL"],
                        s3_endpoint_url=s3_environment["PIXPIPE_S3_ENDPOINT_URL"],
                        s3_serve=serve)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        answer = client.get(f"/processed_images/{path}", follow_redirects=False)
        if serve == "redirect":
            assert answer.status_code == 307
            answer = httpx.get(answer.headers["location"])
        assert answer.status_code == 200
        assert answer.content == b"\xff\xd8jpeg bytes"
        assert answer.headers["content-type"] == "image/jpeg"
        assert "max-age" in answer.headers["cache-control"]
        assert client.get("/processed_images/../../etc/passwd").status_code == 404
        if serve == "proxy":
            missing = client.get(f"/processed_images/{request_id}/{uuid.uuid4().hex}.jpg")
            assert missing.status_code == 404
    assert not (settings.storage.images_dir).exists()
