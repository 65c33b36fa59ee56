"""The typed settings, read from PIXPIPE_* environment variables, in one group per concern.

Each group is handed to the code that reads it (the fetcher gets ``settings.fetch``, the
webhook sender ``settings.webhooks``, …); only a service's entry point holds the whole object.
A field's variable is ``PIXPIPE_<NAME>`` where NAME is its validation alias, or its own name
when it has none: the variables predate the groups, so they stay flat.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pixpipe import __version__
from pixpipe.domain import Effort, EncodedFormat

ENV_PREFIX = "PIXPIPE_"

# Where spans go (pixpipe.tracing): nowhere, standard output, or an OTLP collector.
TracingExporter = Literal["off", "console", "otlp"]

# A list of delays in seconds; NoDecode lets "1,5,15" through to our own parser below.
Schedule = Annotated[list[float], NoDecode]


def _parse_schedule(value: object) -> object:
    # Accept "1,5,15" as well as a JSON list.
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [float(part) for part in text.split(",") if part.strip()]
    return value


class _Group(BaseModel):
    # By name in code (FetchSettings(timeout_seconds=5)), by alias from the flat variables.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class NetworkSettings(_Group):
    """Where the services listen, where they find each other and where users reach them."""

    bind_host: str = "127.0.0.1"
    gateway_port: int = 8000
    ingest_port: int = 50051
    status_port: int = 50052
    ingest_address: str | None = Field(default=None, description="host:port of the ingest "
                                       "service for the gateway; default: bind_host:ingest_port")
    status_address: str | None = Field(default=None, description="host:port of the status "
                                       "service for the gateway; default: bind_host:status_port")
    public_base_url: str = Field(default="", description="Base of the absolute URLs handed "
                                 "to users (output images, CSV, webhook links); default: the "
                                 "gateway's own address, http://<bind_host>:<gateway_port>.")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(default=None, description=(
        "Host header values the gateway answers (comma-separated); default: on a loopback "
        "bind_host, localhost, 127.0.0.1, [::1] and public_base_url's host, else any."))

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

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
    def resolved_ingest_address(self) -> str:
        return self.ingest_address or f"{self.bind_host}:{self.ingest_port}"

    @property
    def resolved_status_address(self) -> str:
        return self.status_address or f"{self.bind_host}:{self.status_port}"


class AuthSettings(_Group):
    """Who may call the services."""

    api_token: str | None = Field(default=None, description="The single API token: every "
                                  "call must carry it as a bearer token (one tenant).")
    api_keys: bool = Field(default=False, description="Every call must carry an API key made "
                           "with `pixpipe keys create`; each key sees only its own requests.")


class NatsSettings(_Group):
    """The NATS server and JetStream streams every service talks through."""

    url: str | None = Field(default=None, validation_alias="nats_url", description="NATS "
                            "server URL; default: start the embedded nats-server.")
    token: str | None = Field(default=None, validation_alias="nats_token", description="Token "
                              "the services present to NATS (the embedded server's is "
                              "generated and kept in the data dir).")
    embedded_port: int = Field(default=4222, validation_alias="embedded_nats_port")
    startup_wait_seconds: float = Field(default=60.0, ge=0,
                                        validation_alias="nats_startup_wait_seconds",
                                        description="How long a starting service waits for "
                                        "JetStream.")
    request_timeout_seconds: float = Field(default=10.0, gt=0,
                                           validation_alias="nats_request_timeout_seconds",
                                           description="How long a JetStream publish or API "
                                           "call may wait.")
    stream_replicas: int = Field(default=1, ge=1, le=5)


class LimitSettings(_Group):
    """What one upload may hold and how many calls a gateway or ingest process takes at once.

    Past the gateway's limits it answers 429 with Retry-After.
    """

    max_upload_bytes: int = 50 * 1024 * 1024
    max_images_per_request: int = 100_000
    max_url_length: int = 2048
    max_csv_columns: int = Field(default=64, ge=3, description="Columns a CSV may have; "
                                 "a wider header or row is refused before it is parsed.")
    max_urls_per_product: int = Field(default=100, ge=1, description="Image URLs one "
                                      "product's cell may list.")
    ingest_max_concurrent_uploads: int = Field(default=32, ge=1, description="Uploads one "
                                               "ingest process receives at once; more are "
                                               "refused RESOURCE_EXHAUSTED (HTTP 429), to "
                                               "retry shortly.")
    gateway_max_concurrent_uploads: int = Field(default=8, ge=1, description="Uploads the "
                                                "gateway receives at once.")
    gateway_max_streams_per_request: int = Field(default=50, ge=1, description="SSE streams "
                                                 "the gateway serves for one request.")
    gateway_max_streams_per_client: int = Field(default=20, ge=1, description="SSE streams "
                                                "the gateway serves for one client address.")


class FetchSettings(_Group):
    """Outbound HTTP: image downloads, and the address policy and User-Agent webhooks share."""

    allow_private_networks: bool = False
    timeout_seconds: float = Field(default=30.0, validation_alias="fetch_timeout_seconds")
    connect_timeout_seconds: float = Field(default=10.0,
                                           validation_alias="fetch_connect_timeout_seconds")
    max_image_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = f"pixpipe/{__version__} (+https://github.com/pixpipe/pixpipe)"


class EncodingSettings(_Group):
    """What an image is decoded into and encoded as when its request does not say."""

    max_image_pixels: int = 50_000_000
    default_quality: int = Field(default=50, ge=1, le=95)
    default_format: EncodedFormat = "jpeg"
    # fast: libjpeg-turbo baseline; balanced: mozjpeg's tables on libjpeg-turbo, progressive;
    # max: mozjpeg with trellis quantisation (docs/codec.md).
    default_effort: Effort = "balanced"
    # quality=auto aims at this SSIMULACRA2 score unless the request names one.
    default_target_score: float = Field(default=70.0, ge=0, le=100)


class CodecSettings(_Group):
    """Each worker's pool of Pillow processes."""

    processes: int = Field(default=0, ge=0, validation_alias="codec_processes",
                           description="Pillow processes per worker; 0 means one per CPU core "
                           "(`make run` shares the cores out among the workers it starts).")
    time_limit_seconds: float = Field(default=60.0, gt=0,
                                      validation_alias="codec_time_limit_seconds",
                                      description="CPU time one image may take in a codec "
                                      "process; past it the process is killed and replaced and "
                                      "the image fails.")
    memory_limit_bytes: int = Field(default=2 * 1024**3, ge=0,
                                    validation_alias="codec_memory_limit_bytes",
                                    description="Address space of each codec process "
                                    "(RLIMIT_AS); an image that needs more fails. 0 turns it "
                                    "off.")


class JobSettings(_Group):
    """Image jobs on the work queue: their lanes, deliveries and retries."""

    worker_concurrency: int = Field(default=8, ge=1, description="Jobs one worker process "
                                    "handles at once.")
    ack_wait_seconds: float = Field(default=30.0, validation_alias="job_ack_wait_seconds")
    max_deliver: int = Field(default=5, ge=1, validation_alias="job_max_deliver")
    retry_backoff_seconds: Schedule = Field(default=[1.0, 5.0, 15.0, 30.0],
                                            validation_alias="job_retry_backoff_seconds")
    express_lane_max_images: int = Field(default=1000, ge=0, description="Requests of at "
                                         "most this many images take the express lane, which "
                                         "workers serve beside the bulk of bigger requests "
                                         "(0: every request queues in one lane).")

    @field_validator("retry_backoff_seconds", mode="before")
    @classmethod
    def _parse_backoff(cls, value: object) -> object:
        return _parse_schedule(value)


class WatchSettings(_Group):
    """The notifier's WatchStatus streams."""

    resync_seconds: float = Field(default=2.0, gt=0, validation_alias="watch_resync_seconds",
                                  description="How long a quiet WatchStatus stream waits "
                                  "before checking the database for changes whose events were "
                                  "lost.")
    max_per_request: int = Field(default=1000, ge=1, validation_alias="watch_max_per_request",
                                 description="WatchStatus streams one notifier serves for one "
                                 "request; more are refused RESOURCE_EXHAUSTED.")
    max_per_client: int = Field(default=1000, ge=1, validation_alias="watch_max_per_client",
                                description="WatchStatus streams one notifier serves for one "
                                "client (its API token when one is set, else its address; the "
                                "gateway counts as one client for all its SSE users); more are "
                                "refused RESOURCE_EXHAUSTED.")


class WebhookSettings(_Group):
    """Signed completion webhooks and their retries."""

    secret: str | None = Field(default=None, validation_alias="webhook_secret",
                               description="Standard Webhooks signing secret (whsec_…); no "
                               "default: `make run` generates one per install, a notifier "
                               "without one refuses to start.")
    timeout_seconds: float = Field(default=10.0, validation_alias="webhook_timeout_seconds")
    # Delay before each retry; the default spans about 27 hours (Standard Webhooks' advice).
    retry_schedule: Schedule = Field(
        default=[5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        validation_alias="webhook_retry_schedule")
    lease_seconds: float = Field(default=60.0, gt=0, validation_alias="webhook_lease_seconds",
                                 description="How long a notifier owns a delivery attempt "
                                 "before another may retry.")
    poll_seconds: float = Field(default=1.0, gt=0, validation_alias="webhook_poll_seconds")

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_retry_schedule(cls, value: object) -> object:
        return _parse_schedule(value)


class StorageSettings(_Group):
    """Where state lives: the data dir, the database, the outputs, and how long they stay."""

    data_dir: Path = Field(default=Path("./pixpipe-data"), description="Processed images, "
                           "the embedded SQLite database and embedded JetStream storage.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: "
                                     "SQLite file under the data dir.")
    # Outputs in an S3-compatible bucket instead of the data dir.
    url: str | None = Field(default=None, validation_alias="storage_url",
                            description="s3://bucket/prefix: outputs go to that bucket and "
                            "nothing to the data dir; unset: <data dir>/processed_images.")
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

    @field_validator("url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?", value):
            raise ValueError("must be s3://bucket or s3://bucket/prefix")
        return value or None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'pixpipe.db').resolve()}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "processed_images"


class LifecycleSettings(_Group):
    """How a service process is tied to its parent and how it stops."""

    exit_with_parent_pid: int | None = Field(default=None, description="Linux: the service "
                                             "stops when this process dies (the dev stack "
                                             "sets it to its own pid).")
    shutdown_grace_seconds: float = 20.0
    grpc_drain_seconds: float = Field(default=2.0, ge=0, description="How long a stopping "
                                      "gRPC server reports NOT_SERVING before it stops.")


class ObservabilitySettings(_Group):
    """Logs, metrics and traces."""

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(default="text", description="`json`: one "
                                                "JSON object per log line, for collectors.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Port of this "
                              "process's Prometheus /metrics; 0 turns it off.")
    tracing: TracingExporter = Field(default="off", description="Where OpenTelemetry spans "
                                     "go: nowhere, standard output (a JSON line each), or an "
                                     "OTLP exporter (docs/operations.md, Tracing).")


class Settings(BaseSettings):
    """Everything a pixpipe process can be configured with.

    Built from the environment, or from keyword arguments: groups
    (``Settings(fetch=FetchSettings(...))``) or the flat names of the variables without
    their prefix (``Settings(fetch_timeout_seconds=5)``). Nothing else in the code base reads
    the environment for configuration.
    """

    # A keyword argument that names no setting is refused, not ignored: a misspelt one
    # would otherwise leave its setting at the default without a word.
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    network: NetworkSettings = Field(default_factory=NetworkSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    encoding: EncodingSettings = Field(default_factory=EncodingSettings)
    codec: CodecSettings = Field(default_factory=CodecSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    if TYPE_CHECKING:
        # Groups, or the flat names beside them: the signature pydantic derives knows only
        # the groups.
        def __init__(self, **values: Any) -> None: ...

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the flat variables: PIXPIPE_FETCH (a group as JSON) would be a second spelling.
        return init_settings, FlatEnvironment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _group_flat_names(cls, data: object) -> object:
        # Every group's values are keyed by their flat names, so a validation error names the
        # variable (fetch.fetch_timeout_seconds) and a field given twice is given once.
        if not isinstance(data, dict):
            return data
        flat = {key: value for key, value in data.items() if key in flat_names()}
        grouped = {key: value for key, value in data.items() if key not in flat_names()}
        for group in cls.model_fields:
            if isinstance(grouped.get(group), dict):
                grouped[group] = _keyed_by_flat_name(group, grouped[group])
        for key, value in flat.items():
            group = flat_names()[key][0]
            current = grouped.get(group)
            if current is None or isinstance(current, dict | BaseModel):
                # A flat keyword wins over the same field of a group passed beside it.
                grouped[group] = {**_keyed_by_flat_name(group, current), key: value}
        return grouped

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> Settings:
        """Settings as if ``variables`` were in the environment too (they win over it).

        Names without the ``PIXPIPE_`` prefix are not settings and are passed over: an
        environment handed to child processes carries others.
        """
        return cls(**{name.removeprefix(ENV_PREFIX).lower(): value
                      for name, value in variables.items() if name.startswith(ENV_PREFIX)})

    def updated(self, **values: Any) -> Settings:
        """A copy with some fields changed, named as the flat keyword arguments of
        ``Settings``; like ``model_copy`` it validates nothing and reads no environment."""
        changes: dict[str, dict[str, Any]] = {}
        for flat, value in values.items():
            group, field = flat_names()[flat]
            changes.setdefault(group, {})[field] = value
        return self.model_copy(update={
            group: getattr(self, group).model_copy(update=fields)
            for group, fields in changes.items()})


class FlatEnvironment(PydanticBaseSettingsSource):
    """Each group field from its flat ``PIXPIPE_<NAME>`` variable, names matched regardless
    of case as pydantic-settings does."""

    def __call__(self) -> dict[str, Any]:
        environ = {name.lower(): value for name, value in os.environ.items()}
        found: dict[str, dict[str, str]] = {}
        for flat, (group, _) in flat_names().items():
            value = environ.get(ENV_PREFIX.lower() + flat)
            if value is not None:
                found.setdefault(group, {})[flat] = value
        return found

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ reads every group at once.
        return None, field_name, False


@cache
def flat_names() -> dict[str, tuple[str, str]]:
    """Each variable's name without the prefix, in lower case → (group, field)."""
    names: dict[str, tuple[str, str]] = {}
    for group, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for field, field_info in model.model_fields.items():
            alias = field_info.validation_alias
            assert alias is None or isinstance(alias, str)
            names[alias or field] = (group, field)
    return names


def _keyed_by_flat_name(group: str, values: dict[str, Any] | BaseModel | None,
                        ) -> dict[str, Any]:
    if isinstance(values, BaseModel):
        values = values.model_dump(exclude_unset=True)
    flat_of = {field: flat for flat, (owner, field) in flat_names().items() if owner == group}
    return {flat_of.get(key, key): value for key, value in (values or {}).items()}


def environment_variables() -> dict[str, tuple[str, str]]:
    """Every variable the settings read → (group, field)."""
    return {ENV_PREFIX + flat.upper(): place for flat, place in flat_names().items()}


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def codec_processes_per_worker(codec: CodecSettings, *, workers_on_this_machine: int) -> int:
    """Pillow processes for each worker: as configured, or the cores shared out evenly.

    One Pillow process per core, all workers together, is the fastest arrangement: each worker
    queues its next image in its processes' pipes, so a process never waits for its worker,
    while more processes than cores only switch between each other and evict each other's
    caches (measured: 2 workers × 2 processes on 2 cores ran 7% slower than 2 × 1).
    """
    if codec.processes:
        return codec.processes
    return max(1, available_cores() // max(1, workers_on_this_machine))
