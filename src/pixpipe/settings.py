"""The one typed settings object, read from PIXPIPE_* environment variables."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pixpipe.domain import Effort, EncodedFormat

# A list of delays in seconds; NoDecode lets "1,5,15" through to our own parser below.
Schedule = Annotated[list[float], NoDecode]


class Settings(BaseSettings):
    """Everything a pixpipe process can be configured with.

    Every field maps to ``PIXPIPE_<FIELD_NAME>``; nothing else in the code base reads the
    environment for configuration.
    """

    model_config = SettingsConfigDict(env_prefix="PIXPIPE_", extra="ignore", frozen=True)

    # Where things live.
    data_dir: Path = Field(default=Path("./pixpipe-data"), description="Processed images, "
                           "the embedded SQLite database and embedded JetStream storage.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: "
                                     "SQLite file under the data dir.")
    nats_url: str | None = Field(default=None, description="NATS server URL; default: start "
                                 "the embedded nats-server.")
    nats_token: str | None = Field(default=None, description="Token the services present to "
                                   "NATS (the embedded server's is generated and kept in the "
                                   "data dir).")
    public_base_url: str = Field(default="", description="Base of the absolute URLs handed "
                                 "to users (output images, CSV, webhook links); default: the "
                                 "gateway's own address, http://<bind_host>:<gateway_port>.")

    # Network.
    bind_host: str = "127.0.0.1"
    gateway_port: int = 8000
    ingest_port: int = 50051
    status_port: int = 50052
    ingest_address: str | None = Field(default=None, description="host:port of the ingest "
                                       "service for the gateway; default: bind_host:ingest_port")
    status_address: str | None = Field(default=None, description="host:port of the status "
                                       "service for the gateway; default: bind_host:status_port")
    api_token: str | None = Field(default=None, description="The single API token: every "
                                  "call must carry it as a bearer token (one tenant).")
    api_keys: bool = Field(default=False, description="Every call must carry an API key made "
                           "with `pixpipe keys create`; each key sees only its own requests.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Port of this "
                              "process's Prometheus /metrics; 0 turns it off.")
    embedded_nats_port: int = 4222
    nats_startup_wait_seconds: float = Field(default=60.0, ge=0, description="How long a "
                                             "starting service waits for JetStream.")
    nats_request_timeout_seconds: float = Field(default=10.0, gt=0, description="How long a "
                                                "JetStream publish or API call may wait.")

    # Upload limits.
    max_upload_bytes: int = 50 * 1024 * 1024
    # The REST gateway's own limits; past them it answers 429 with Retry-After.
    gateway_max_concurrent_uploads: int = Field(default=8, ge=1, description="Uploads the "
                                                "gateway receives at once.")
    gateway_max_streams_per_request: int = Field(default=50, ge=1, description="SSE streams "
                                                 "the gateway serves for one request.")
    gateway_max_streams_per_client: int = Field(default=20, ge=1, description="SSE streams "
                                                "the gateway serves for one client address.")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(default=None, description=(
        "Host header values the gateway answers (comma-separated); default: on a loopback "
        "bind_host, localhost, 127.0.0.1, [::1] and public_base_url's host, else any."))
    max_images_per_request: int = 100_000
    max_url_length: int = 2048
    max_csv_columns: int = Field(default=64, ge=3, description="Columns a CSV may have; "
                                 "a wider header or row is refused before it is parsed.")
    max_urls_per_product: int = Field(default=100, ge=1, description="Image URLs one "
                                      "product's cell may list.")
    express_lane_max_images: int = Field(default=1000, ge=0, description="Requests of at "
                                         "most this many images take the express lane, which "
                                         "workers serve beside the bulk of bigger requests "
                                         "(0: every request queues in one lane).")
    ingest_max_concurrent_uploads: int = Field(default=32, ge=1, description="Uploads one "
                                               "ingest process receives at once; more are "
                                               "refused RESOURCE_EXHAUSTED (HTTP 429), to "
                                               "retry shortly.")

    # Fetching images.
    allow_private_networks: bool = False
    fetch_timeout_seconds: float = 30.0
    fetch_connect_timeout_seconds: float = 10.0
    max_image_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "pixpipe/0.1 (+https://github.com/pixpipe/pixpipe)"

    # Decoding and encoding.
    max_image_pixels: int = 50_000_000
    default_quality: int = Field(default=50, ge=1, le=95)
    default_format: EncodedFormat = "jpeg"
    # fast: libjpeg-turbo baseline; balanced: mozjpeg's tables on libjpeg-turbo, progressive;
    # max: mozjpeg with trellis quantisation (docs/codec.md).
    default_effort: Effort = "balanced"
    # quality=auto aims at this SSIMULACRA2 score unless the request names one.
    default_target_score: float = Field(default=70.0, ge=0, le=100)

    # Workers.
    worker_concurrency: int = Field(default=8, ge=1, description="Jobs one worker process "
                                    "handles at once.")
    codec_processes: int = Field(default=0, ge=0, description="Pillow processes per worker; "
                                 "0 means one per CPU core (`make run` shares the cores out "
                                 "among the workers it starts).")
    codec_time_limit_seconds: float = Field(default=60.0, gt=0, description="CPU time one "
                                            "image may take in a codec process; past it the "
                                            "process is killed and replaced and the image "
                                            "fails.")
    codec_memory_limit_bytes: int = Field(default=2 * 1024**3, ge=0, description="Address "
                                          "space of each codec process (RLIMIT_AS); an image "
                                          "that needs more fails. 0 turns it off.")
    job_ack_wait_seconds: float = 30.0
    job_max_deliver: int = Field(default=5, ge=1)
    job_retry_backoff_seconds: Schedule = Field(default=[1.0, 5.0, 15.0, 30.0])
    stream_replicas: int = Field(default=1, ge=1, le=5)
    shutdown_grace_seconds: float = 20.0
    grpc_drain_seconds: float = Field(default=2.0, ge=0, description="How long a stopping "
                                      "gRPC server reports NOT_SERVING before it stops.")
    watch_resync_seconds: float = Field(default=2.0, gt=0, description="How long a quiet "
                                        "WatchStatus stream waits before checking the "
                                        "database for changes whose events were lost.")
    watch_max_per_request: int = Field(default=1000, ge=1, description="WatchStatus "
                                       "streams one notifier serves for one request; more "
                                       "are refused RESOURCE_EXHAUSTED.")
    watch_max_per_client: int = Field(default=1000, ge=1, description="WatchStatus streams "
                                      "one notifier serves for one client (its API token when "
                                      "one is set, else its address; the gateway counts as one "
                                      "client for all its SSE users); more are refused "
                                      "RESOURCE_EXHAUSTED.")

    # Webhooks.
    webhook_secret: str | None = Field(default=None, description="Standard Webhooks signing "
                                       "secret (whsec_…); no default: `make run` generates "
                                       "one per install, a notifier without one refuses to "
                                       "start.")
    webhook_timeout_seconds: float = 10.0
    # Delay before each retry; the default spans about 27 hours (Standard Webhooks' advice).
    webhook_retry_schedule: Schedule = Field(
        default=[5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0])
    webhook_lease_seconds: float = Field(default=60.0, gt=0, description="How long a notifier "
                                         "owns a delivery attempt before another may retry.")
    webhook_poll_seconds: float = Field(default=1.0, gt=0)

    # Object storage: outputs in an S3-compatible bucket instead of the data dir.
    storage_url: str | None = Field(default=None, description="s3://bucket/prefix: outputs "
                                    "go to that bucket and nothing to the data dir; unset: "
                                    "<data dir>/processed_images.")
    s3_endpoint_url: str | None = Field(default=None, description="S3 API address for "
                                        "servers other than AWS (SeaweedFS, MinIO, …).")
    s3_public_endpoint_url: str | None = Field(default=None, description="S3 address users "
                                               "reach, for presigned URLs; default: "
                                               "s3_endpoint_url.")
    s3_serve: Literal["redirect", "proxy"] = Field(default="redirect", description="How the "
                                                   "gateway answers /processed_images/…: a "
                                                   "redirect to a presigned URL, or the bytes.")
    s3_presign_seconds: int = Field(default=3600, ge=60, le=604800)
    s3_cache_control: str = "public, max-age=31536000, immutable"
    s3_multipart_threshold_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024,
                                              description="Outputs this large or larger "
                                              "are uploaded in parts of this size.")

    # Retention: finished requests older than this are deleted, outputs and rows.
    retention_days: float | None = Field(default=None, gt=0, description="Days a finished "
                                         "request is kept; unset keeps everything.")
    retention_interval_seconds: float = Field(default=3600.0, gt=0, description="How often "
                                              "a notifier looks for expired requests.")

    # Content-addressed reuse: the same source bytes with the same options are encoded once.
    reuse_outputs: bool = Field(default=True, description="Reuse the output of an identical "
                                "source and options (docs/design.md), and re-fetch repeated "
                                "URLs conditionally.")

    log_level: str = "INFO"
    exit_with_parent_pid: int | None = Field(default=None, description="Linux: the service "
                                             "stops when this process dies (the dev stack "
                                             "sets it to its own pid).")
    log_format: Literal["text", "json"] = Field(default="text", description="`json`: one "
                                                "JSON object per log line, for collectors.")

    @field_validator("job_retry_backoff_seconds", "webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        # Accept "1,5,15" as well as the JSON list pydantic-settings expects.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [float(part) for part in text.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?", value):
            raise ValueError("must be s3://bucket or s3://bucket/prefix")
        return value or None

    @field_validator("public_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _default_public_base_url(cls, data: object) -> object:
        # Users reach the gateway where it listens unless a proxy in front says otherwise.
        if isinstance(data, dict) and not data.get("public_base_url"):
            host = str(data.get("bind_host") or "127.0.0.1")
            if host in ("0.0.0.0", "::", ""):  # noqa: S104  (compared with, never bound to)
                host = "127.0.0.1"
            port = data.get("gateway_port") or 8000
            return {**data, "public_base_url":
                    f"http://{f'[{host}]' if ':' in host else host}:{port}"}
        return data

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'pixpipe.db').resolve()}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "processed_images"

    @property
    def resolved_ingest_address(self) -> str:
        return self.ingest_address or f"{self.bind_host}:{self.ingest_port}"

    @property
    def resolved_status_address(self) -> str:
        return self.status_address or f"{self.bind_host}:{self.status_port}"


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def codec_processes_per_worker(settings: Settings, *, workers_on_this_machine: int) -> int:
    """Pillow processes for each worker: as configured, or the cores shared out evenly.

    One Pillow process per core, all workers together, is the fastest arrangement: each worker
    queues its next image in its processes' pipes, so a process never waits for its worker,
    while more processes than cores only switch between each other and evict each other's
    caches (measured: 2 workers × 2 processes on 2 cores ran 7% slower than 2 × 1).
    """
    if settings.codec_processes:
        return settings.codec_processes
    return max(1, available_cores() // max(1, workers_on_this_machine))
