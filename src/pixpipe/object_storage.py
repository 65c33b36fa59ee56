"""Outputs in S3-compatible object storage: uploads from codec processes, presigned reads."""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pixpipe.errors import PixpipeError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import LifecycleRuleTypeDef

# Short timeouts and few attempts of botocore's own: an upload that still fails is handed
# back to the job queue as a transient fault, whose backoff spans a server restart.
_CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=30, signature_version="s3v4",
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"})
_CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png",
                  "webp": "image/webp", "avif": "image/avif", "gif": "image/gif"}
# One client per process and endpoint: creating one costs ~80 ms, and clients are
# thread-safe but not picklable, so each codec process makes its own on first use.
_clients: dict[str | None, S3Client] = {}
# The bucket lifecycle rule retention keeps: one per prefix would need the prefix in it.
LIFECYCLE_RULE_ID = "pixpipe-retention"


class StorageUnavailable(PixpipeError):
    """An upload or read failed in a way a later attempt may not (network, 5xx, refusal)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StorageMisconfigured(PixpipeError):
    """The bucket cannot be used at all: wrong credentials, missing bucket, no server."""


class StoredObjectMissing(PixpipeError):
    """No object under that key."""


def content_type(relative_path: str) -> str:
    extension = relative_path.rsplit(".", 1)[-1].lower()
    return (_CONTENT_TYPES.get(extension) or mimetypes.guess_type(relative_path)[0]
            or "application/octet-stream")


def s3_client(endpoint_url: str | None) -> S3Client:
    """Credentials and region come from the standard AWS variables and files."""
    client = _clients.get(endpoint_url)
    if client is None:
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url,
                                                config=_CLIENT_CONFIG)
        _clients[endpoint_url] = client
    return client


@dataclass(frozen=True)
class S3Store:
    """Objects at ``<prefix>/<request_id>/<image_id>.<ext>`` in one bucket.

    Plain data, so it pickles to the codec processes with each call; the client is made
    where it is used.
    """

    bucket: str
    prefix: str
    endpoint_url: str | None = None
    cache_control: str = "public, max-age=31536000, immutable"
    multipart_threshold: int = 8 * 1024 * 1024

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3Store:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return cls(bucket=bucket, prefix=prefix.strip("/"), **kwargs)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @staticmethod
    def relative_path(request_id: str, image_id: str, extension: str) -> str:
        return f"{request_id}/{image_id}.{extension}"

    def key(self, relative_path: str) -> str:
        return f"{self.prefix}/{relative_path}" if self.prefix else relative_path

    def write(self, relative_path: str, data: bytes) -> None:
        """Blocking, in a codec process: one PUT, or a multipart upload for a big output."""
        extra = {"ContentType": content_type(relative_path), "CacheControl": self.cache_control}
        client = s3_client(self.endpoint_url)
        try:
            if len(data) < self.multipart_threshold:
                client.put_object(Bucket=self.bucket, Key=self.key(relative_path), Body=data,
                                  **extra)  # type: ignore[arg-type]
            else:
                client.upload_fileobj(io.BytesIO(data), self.bucket, self.key(relative_path),
                                      ExtraArgs=extra, Config=TransferConfig(
                                          multipart_threshold=self.multipart_threshold,
                                          multipart_chunksize=self.multipart_threshold,
                                          use_threads=False))
        except (BotoCoreError, ClientError) as error:
            raise StorageUnavailable(f"object storage upload failed: {_describe(error)}"
                                     ) from None

    def copy(self, source_path: str, relative_path: str) -> bool:
        """Blocking: a server-side copy (no bytes through this process), with the source's
        content type and cache headers; False when the source object is gone."""
        if source_path == relative_path:
            return True
        try:
            s3_client(self.endpoint_url).copy_object(
                Bucket=self.bucket, Key=self.key(relative_path), MetadataDirective="COPY",
                CopySource={"Bucket": self.bucket, "Key": self.key(source_path)})
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise StorageUnavailable(f"object storage copy failed: {_describe(error)}"
                                     ) from None
        except BotoCoreError as error:
            raise StorageUnavailable(f"object storage copy failed: {_describe(error)}"
                                     ) from None
        return True

    def check(self) -> None:
        """Blocking: fail at start, with the reason, when the bucket cannot be written."""
        try:
            s3_client(self.endpoint_url).head_bucket(Bucket=self.bucket)
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise StorageMisconfigured(f"{self.url}: bucket {self.bucket!r} does not "
                                           "exist") from None
            if status in (401, 403):
                raise StorageMisconfigured(
                    f"{self.url}: access denied (check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY)") from None
            raise StorageMisconfigured(f"{self.url}: {_describe(error)}") from None
        except BotoCoreError as error:
            raise StorageMisconfigured(f"{self.url}: {_describe(error)}") from None

    def presigned_url(self, relative_path: str, *, expires_seconds: int,
                      endpoint_url: str | None = None) -> str:
        """No network call: a URL signed with this process's credentials."""
        client = s3_client(endpoint_url or self.endpoint_url)
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(relative_path)},
            ExpiresIn=expires_seconds)

    def open(self, relative_path: str) -> StoredObject:
        """Blocking: the object's headers, and its body to read in chunks."""
        try:
            answer = s3_client(self.endpoint_url).get_object(
                Bucket=self.bucket, Key=self.key(relative_path))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StoredObjectMissing(relative_path) from None
            raise StorageUnavailable(_describe(error)) from None
        except BotoCoreError as error:
            raise StorageUnavailable(_describe(error)) from None
        return StoredObject(content_type=answer.get("ContentType") or
                            content_type(relative_path),
                            length=answer.get("ContentLength"), etag=answer.get("ETag"),
                            cache_control=answer.get("CacheControl"), body=answer["Body"])

    def expire_after(self, days: int) -> bool:
        """Blocking: a bucket lifecycle rule that deletes this prefix's objects ``days`` after
        they were written, beside the bucket's other rules; False when the server keeps no
        lifecycle rules (then the batch deletes alone remove outputs)."""
        client = s3_client(self.endpoint_url)
        try:
            try:
                rules = client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            ours: LifecycleRuleTypeDef = {
                "ID": LIFECYCLE_RULE_ID, "Status": "Enabled", "Expiration": {"Days": days},
                "Filter": {"Prefix": f"{self.prefix}/" if self.prefix else ""}}
            others = [rule for rule in rules if rule.get("ID") != LIFECYCLE_RULE_ID]
            client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [*others, ours]})
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (
                    400, 405, 501):
                return False
            raise StorageUnavailable(_describe(error)) from None
        except BotoCoreError as error:
            raise StorageUnavailable(_describe(error)) from None
        return True

    def delete(self, relative_paths: list[str]) -> None:
        """Blocking: up to 1000 objects per call (the S3 batch limit)."""
        client = s3_client(self.endpoint_url)
        for start in range(0, len(relative_paths), 1000):
            batch = relative_paths[start:start + 1000]
            try:
                client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.key(path)} for path in batch], "Quiet": True})
            except (BotoCoreError, ClientError) as error:
                raise StorageUnavailable(_describe(error)) from None


@dataclass
class StoredObject:
    content_type: str
    length: int | None
    etag: str | None
    cache_control: str | None
    body: Any

    def chunks(self, size: int = 256 * 1024) -> Iterator[bytes]:
        try:
            yield from self.body.iter_chunks(size)
        finally:
            self.body.close()


def _describe(error: Exception) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{details.get('Code') or status} {details.get('Message') or ''}".strip()
    return str(error)
