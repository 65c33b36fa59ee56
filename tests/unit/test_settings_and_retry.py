"""The settings object and the retry schedule."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from pixpipe import settings as settings_module
from pixpipe.dev.stack import Stack
from pixpipe.retry import retry_delay
from pixpipe.settings import (
    FetchSettings,
    FlatEnvironment,
    Settings,
    available_cores,
    codec_processes_per_worker,
    environment_variables,
)

# The variables from before the settings were grouped: every one is still read, by that name.
FLAT_VARIABLES = frozenset({
    "PIXPIPE_DATA_DIR", "PIXPIPE_DATABASE_URL", "PIXPIPE_NATS_URL", "PIXPIPE_NATS_TOKEN",
    "PIXPIPE_PUBLIC_BASE_URL", "PIXPIPE_BIND_HOST", "PIXPIPE_GATEWAY_PORT", "PIXPIPE_INGEST_PORT",
    "PIXPIPE_STATUS_PORT", "PIXPIPE_INGEST_ADDRESS", "PIXPIPE_STATUS_ADDRESS", "PIXPIPE_API_TOKEN",
    "PIXPIPE_API_KEYS", "PIXPIPE_METRICS_PORT", "PIXPIPE_EMBEDDED_NATS_PORT",
    "PIXPIPE_NATS_STARTUP_WAIT_SECONDS", "PIXPIPE_NATS_REQUEST_TIMEOUT_SECONDS",
    "PIXPIPE_MAX_UPLOAD_BYTES", "PIXPIPE_GATEWAY_MAX_CONCURRENT_UPLOADS",
    "PIXPIPE_GATEWAY_MAX_STREAMS_PER_REQUEST", "PIXPIPE_GATEWAY_MAX_STREAMS_PER_CLIENT",
    "PIXPIPE_ALLOWED_HOSTS", "PIXPIPE_MAX_IMAGES_PER_REQUEST", "PIXPIPE_MAX_URL_LENGTH",
    "PIXPIPE_MAX_CSV_COLUMNS", "PIXPIPE_MAX_URLS_PER_PRODUCT", "PIXPIPE_EXPRESS_LANE_MAX_IMAGES",
    "PIXPIPE_INGEST_MAX_CONCURRENT_UPLOADS", "PIXPIPE_ALLOW_PRIVATE_NETWORKS",
    "PIXPIPE_FETCH_TIMEOUT_SECONDS", "PIXPIPE_FETCH_CONNECT_TIMEOUT_SECONDS",
    "PIXPIPE_MAX_IMAGE_BYTES", "PIXPIPE_MAX_REDIRECTS", "PIXPIPE_USER_AGENT",
    "PIXPIPE_MAX_IMAGE_PIXELS", "PIXPIPE_DEFAULT_QUALITY", "PIXPIPE_DEFAULT_FORMAT",
    "PIXPIPE_DEFAULT_EFFORT", "PIXPIPE_DEFAULT_TARGET_SCORE", "PIXPIPE_WORKER_CONCURRENCY",
    "PIXPIPE_CODEC_PROCESSES", "PIXPIPE_CODEC_TIME_LIMIT_SECONDS",
    "PIXPIPE_CODEC_MEMORY_LIMIT_BYTES", "PIXPIPE_JOB_ACK_WAIT_SECONDS", "PIXPIPE_JOB_MAX_DELIVER",
    "PIXPIPE_JOB_RETRY_BACKOFF_SECONDS", "PIXPIPE_STREAM_REPLICAS",
    "PIXPIPE_SHUTDOWN_GRACE_SECONDS", "PIXPIPE_GRPC_DRAIN_SECONDS", "PIXPIPE_WATCH_RESYNC_SECONDS",
    "PIXPIPE_WATCH_MAX_PER_REQUEST", "PIXPIPE_WATCH_MAX_PER_CLIENT", "PIXPIPE_WEBHOOK_SECRET",
    "PIXPIPE_WEBHOOK_TIMEOUT_SECONDS", "PIXPIPE_WEBHOOK_RETRY_SCHEDULE",
    "PIXPIPE_WEBHOOK_LEASE_SECONDS", "PIXPIPE_WEBHOOK_POLL_SECONDS", "PIXPIPE_STORAGE_URL",
    "PIXPIPE_S3_ENDPOINT_URL", "PIXPIPE_S3_PUBLIC_ENDPOINT_URL", "PIXPIPE_S3_SERVE",
    "PIXPIPE_S3_PRESIGN_SECONDS", "PIXPIPE_S3_CACHE_CONTROL",
    "PIXPIPE_S3_MULTIPART_THRESHOLD_BYTES", "PIXPIPE_RETENTION_DAYS",
    "PIXPIPE_RETENTION_INTERVAL_SECONDS", "PIXPIPE_REUSE_OUTPUTS", "PIXPIPE_LOG_LEVEL",
    "PIXPIPE_EXIT_WITH_PARENT_PID", "PIXPIPE_LOG_FORMAT",
})


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("PIXPIPE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_point_at_the_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIXPIPE_DATABASE_URL", "PIXPIPE_NATS_URL", "PIXPIPE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.storage.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.storage.resolved_database_url.endswith("pixpipe-data/pixpipe.db")
    assert settings.nats.url is None
    network = settings.network
    assert (network.gateway_port, network.ingest_port, network.status_port) == (
        8000, 50051, 50052)
    assert settings.encoding.default_quality == 50 and not settings.fetch.allow_private_networks
    assert sum(settings.webhooks.retry_schedule) >= 24 * 3600


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXPIPE_GATEWAY_PORT", "9000")
    monkeypatch.setenv("PIXPIPE_ALLOW_PRIVATE_NETWORKS", "true")
    monkeypatch.setenv("PIXPIPE_WEBHOOK_RETRY_SCHEDULE", "1, 2.5,10")
    monkeypatch.setenv("PIXPIPE_JOB_RETRY_BACKOFF_SECONDS", "[0.5, 1]")
    monkeypatch.setenv("PIXPIPE_PUBLIC_BASE_URL", "https://img.shop.example/")
    settings = Settings()
    assert settings.network.gateway_port == 9000 and settings.fetch.allow_private_networks
    assert settings.webhooks.retry_schedule == [1.0, 2.5, 10.0]
    assert settings.jobs.retry_backoff_seconds == [0.5, 1.0]
    assert settings.network.public_base_url == "https://img.shop.example"


def test_out_of_range_values_fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXPIPE_DEFAULT_QUALITY", "120")
    with pytest.raises(ValidationError):
        Settings()


def test_the_variables_are_the_flat_ones_and_tracing() -> None:
    assert set(environment_variables()) == FLAT_VARIABLES | {"PIXPIPE_TRACING"}


def test_every_group_field_reads_its_variable(clean_environment: pytest.MonkeyPatch) -> None:
    variables = environment_variables()
    for variable in variables:
        clean_environment.setenv(variable, f"value of {variable}")
    read = FlatEnvironment(Settings)()
    for group, info in Settings.model_fields.items():
        assert info.annotation is not None
        for field in info.annotation.model_fields:
            variable = next(name for name, place in variables.items()
                            if place == (group, field))
            flat_name = variable.removeprefix("PIXPIPE_").lower()
            assert read[group][flat_name] == f"value of {variable}", (group, field)


def test_every_variable_reaches_its_field(clean_environment: pytest.MonkeyPatch) -> None:
    # A value for each that differs from its default and passes its checks.
    values = {"PIXPIPE_FETCH_TIMEOUT_SECONDS": ("7.5", 7.5),
              "PIXPIPE_EMBEDDED_NATS_PORT": ("4333", 4333),
              "PIXPIPE_CODEC_PROCESSES": ("3", 3),
              "PIXPIPE_JOB_MAX_DELIVER": ("9", 9),
              "PIXPIPE_WATCH_MAX_PER_CLIENT": ("7", 7),
              "PIXPIPE_WEBHOOK_SECRET": ("whsec_x", "whsec_x"),
              "PIXPIPE_STORAGE_URL": ("s3://bucket/prefix", "s3://bucket/prefix"),
              "PIXPIPE_S3_SERVE": ("proxy", "proxy"),
              "PIXPIPE_DATA_DIR": ("/srv/pixpipe", Path("/srv/pixpipe")),
              "PIXPIPE_EXIT_WITH_PARENT_PID": ("12", 12),
              "PIXPIPE_API_KEYS": ("true", True),
              "PIXPIPE_MAX_CSV_COLUMNS": ("10", 10),
              "PIXPIPE_DEFAULT_EFFORT": ("max", "max"),
              "PIXPIPE_TRACING": ("otlp", "otlp")}
    for variable, (text, _) in values.items():
        clean_environment.setenv(variable, text)
    # Names match regardless of case, as they always have.
    clean_environment.delenv("PIXPIPE_EMBEDDED_NATS_PORT")
    clean_environment.setenv("pixpipe_embedded_nats_port", "4333")
    settings = Settings()
    for variable, (_, expected) in values.items():
        group, field = environment_variables()[variable]
        assert getattr(getattr(settings, group), field) == expected, variable


def test_flat_keywords_and_groups_build_the_same_settings(
        clean_environment: pytest.MonkeyPatch) -> None:
    flat = Settings(fetch_timeout_seconds=5, max_redirects=2, webhook_retry_schedule="1,2",
                    bind_host="0.0.0.0", gateway_port=9000)
    assert flat.fetch == FetchSettings(timeout_seconds=5, max_redirects=2)
    assert flat.webhooks.retry_schedule == [1.0, 2.0]
    assert flat.network.public_base_url == "http://127.0.0.1:9000"
    # A flat keyword wins over the same field of a group given beside it, and over the
    # environment, which fills in the rest.
    clean_environment.setenv("PIXPIPE_FETCH_CONNECT_TIMEOUT_SECONDS", "3")
    clean_environment.setenv("PIXPIPE_MAX_REDIRECTS", "8")
    mixed = Settings(fetch={"timeout_seconds": 6, "max_redirects": 1}, fetch_timeout_seconds=4)
    assert (mixed.fetch.timeout_seconds, mixed.fetch.max_redirects,
            mixed.fetch.connect_timeout_seconds) == (4, 1, 3)


def test_an_invalid_variable_is_named_in_the_error(
        clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("PIXPIPE_FETCH_TIMEOUT_SECONDS", "soon")
    with pytest.raises(ValidationError, match=r"fetch\.fetch_timeout_seconds"):
        Settings()
    with pytest.raises(ValidationError, match="must be s3://bucket"):
        Settings(storage_url="/var/images")


def test_a_misspelt_keyword_is_refused_and_unknown_variables_are_left_alone(
        clean_environment: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="fetch_timout_seconds"):
        Settings(fetch_timout_seconds=5)
    with pytest.raises(ValidationError, match="timout_seconds"):
        Settings(fetch={"timout_seconds": 5})
    # Other tools' PIXPIPE_* variables (the test suite's own, for one) are not settings.
    clean_environment.setenv("PIXPIPE_TEST_DATABASE_URL", "postgresql://elsewhere/test")
    assert Settings(fetch_timeout_seconds=5).fetch.timeout_seconds == 5


def test_settings_from_variables_pass_over_names_that_are_not_settings(
        clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("PIXPIPE_MAX_REDIRECTS", "2")
    settings = Settings.from_variables({"PIXPIPE_FETCH_TIMEOUT_SECONDS": "5",
                                        "PATH": "/usr/bin", "OTEL_SERVICE_NAME": "x"})
    assert (settings.fetch.timeout_seconds, settings.fetch.max_redirects) == (5, 2)
    with pytest.raises(ValidationError, match="fetch_timout_seconds"):
        Settings.from_variables({"PIXPIPE_FETCH_TIMOUT_SECONDS": "5"})


def test_updated_changes_only_what_it_names(clean_environment: pytest.MonkeyPatch) -> None:
    settings = Settings(embedded_nats_port=4333, max_redirects=2)
    copy = settings.updated(nats_url="nats://elsewhere:4222", database_url="sqlite://")
    assert (copy.nats.url, copy.nats.embedded_port, copy.storage.database_url) == (
        "nats://elsewhere:4222", 4333, "sqlite://")
    assert copy.fetch == settings.fetch and settings.nats.url is None
    # What was given stays given: the dev stack asks whether the NATS port was.
    assert copy.nats.model_fields_set == {"url", "embedded_port"}
    with pytest.raises(KeyError):
        settings.updated(no_such_setting=1)


def test_the_public_base_url_and_allowed_hosts_are_parsed(
        clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("PIXPIPE_BIND_HOST", "::1")
    clean_environment.setenv("PIXPIPE_GATEWAY_PORT", "8080")
    clean_environment.setenv("PIXPIPE_ALLOWED_HOSTS", " shop.example, img.shop.example ")
    network = Settings().network
    assert network.public_base_url == "http://[::1]:8080"
    assert network.allowed_hosts == ["shop.example", "img.shop.example"]
    assert network.resolved_ingest_address == "::1:50051"
    assert Settings(allowed_hosts='["a.example"]').network.allowed_hosts == ["a.example"]


def test_retry_delay_follows_the_schedule_with_bounded_jitter() -> None:
    rng = random.Random(7)
    schedule = [1.0, 10.0, 100.0]
    for attempt, step in ((1, 1.0), (2, 10.0), (3, 100.0), (9, 100.0)):
        delays = [retry_delay(schedule, attempt, rng=rng) for _ in range(200)]
        assert all(step * 0.8 <= delay <= step * 1.2 for delay in delays)
        assert len(set(delays)) > 1
    assert retry_delay([], 3) == 0.0


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    undocumented = [name for name in environment_variables() if name not in readme]
    assert not undocumented, f"README's configuration table lacks {undocumented}"


@pytest.mark.parametrize(("cores", "workers", "expected"),
                         [(2, 2, 1), (8, 2, 4), (8, 3, 2), (1, 2, 1), (4, 1, 4)])
def test_workers_share_the_cores_out_for_pillow(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                workers: int, expected: int) -> None:
    monkeypatch.delenv("PIXPIPE_CODEC_PROCESSES", raising=False)
    monkeypatch.setattr(settings_module, "available_cores", lambda: cores)
    settings = Settings()
    assert codec_processes_per_worker(settings.codec, workers_on_this_machine=workers) == expected
    stack = Stack(settings=settings, workers=workers)
    assert stack.worker_environment({"PIXPIPE_X": "1"}) == {
        "PIXPIPE_X": "1", "PIXPIPE_CODEC_PROCESSES": str(expected)}


def test_configured_codec_processes_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXPIPE_CODEC_PROCESSES", "3")
    monkeypatch.setattr(settings_module, "available_cores", lambda: 16)
    settings = Settings()
    assert codec_processes_per_worker(settings.codec, workers_on_this_machine=4) == 3
    assert Stack(settings=settings, workers=4).worker_environment({}) == {
        "PIXPIPE_CODEC_PROCESSES": "3"}


def test_available_cores_is_at_most_the_machine_total() -> None:
    assert 1 <= available_cores() <= (os.cpu_count() or 1)


def test_job_ids_that_are_not_ids_are_refused() -> None:
    import uuid

    import pytest
    from pydantic import ValidationError

    from pixpipe.domain import ImageJob

    good = {"request_id": str(uuid.uuid4()), "image_id": uuid.uuid4().hex,
            "url": "https://img.example/a.jpg"}
    assert ImageJob.model_validate(good).image_id == good["image_id"]
    for field, value in (("request_id", "../../etc"), ("request_id", good["request_id"] + "/x"),
                         ("image_id", "../passwd"), ("image_id", good["image_id"].upper()),
                         ("image_id", good["image_id"] + "\n")):
        with pytest.raises(ValidationError):
            ImageJob.model_validate({**good, field: value})


def test_a_doubling_delay_starts_at_first_and_stops_at_the_cap() -> None:
    from pixpipe.retry import doubling_delay

    assert [doubling_delay(n, first=0.5, cap=5.0) for n in range(7)] == [
        0.5, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
