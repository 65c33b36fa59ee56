"""The settings object and the retry schedule."""

from __future__ import annotations

import os
import random

import pytest
from pydantic import ValidationError

from pixpipe import settings as settings_module
from pixpipe.dev.stack import Stack
from pixpipe.retry import retry_delay
from pixpipe.settings import Settings, available_cores, codec_processes_per_worker


def test_defaults_point_at_the_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIXPIPE_DATABASE_URL", "PIXPIPE_NATS_URL", "PIXPIPE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("pixpipe-data/pixpipe.db")
    assert settings.nats_url is None
    assert (settings.gateway_port, settings.ingest_port, settings.status_port) == (
        8000, 50051, 50052)
    assert settings.default_quality == 50 and not settings.allow_private_networks
    assert sum(settings.webhook_retry_schedule) >= 24 * 3600


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXPIPE_GATEWAY_PORT", "9000")
    monkeypatch.setenv("PIXPIPE_ALLOW_PRIVATE_NETWORKS", "true")
    monkeypatch.setenv("PIXPIPE_WEBHOOK_RETRY_SCHEDULE", "1, 2.5,10")
    monkeypatch.setenv("PIXPIPE_JOB_RETRY_BACKOFF_SECONDS", "[0.5, 1]")
    monkeypatch.setenv("PIXPIPE_PUBLIC_BASE_URL", "https://img.shop.example/")
    settings = Settings()
    assert settings.gateway_port == 9000 and settings.allow_private_networks
    assert settings.webhook_retry_schedule == [1.0, 2.5, 10.0]
    assert settings.job_retry_backoff_seconds == [0.5, 1.0]
    assert settings.public_base_url == "https://img.shop.example"


def test_out_of_range_values_fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXPIPE_DEFAULT_QUALITY", "120")
    with pytest.raises(ValidationError):
        Settings()


def test_retry_delay_follows_the_schedule_with_bounded_jitter() -> None:
    rng = random.Random(7)
    schedule = [1.0, 10.0, 100.0]
    for attempt, step in ((1, 1.0), (2, 10.0), (3, 100.0), (9, 100.0)):
        delays = [retry_delay(schedule, attempt, rng=rng) for _ in range(200)]
        assert all(step * 0.8 <= delay <= step * 1.2 for delay in delays)
        assert len(set(delays)) > 1
    assert retry_delay([], 3) == 0.0


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    undocumented = [name for name in Settings.model_fields
                    if f"PIXPIPE_{name.upper()}" not in readme]
    assert not undocumented, f"README's configuration table lacks {undocumented}"


@pytest.mark.parametrize(("cores", "workers", "expected"),
                         [(2, 2, 1), (8, 2, 4), (8, 3, 2), (1, 2, 1), (4, 1, 4)])
def test_workers_share_the_cores_out_for_pillow(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                workers: int, expected: int) -> None:
    monkeypatch.delenv("PIXPIPE_CODEC_PROCESSES", raising=False)
    monkeypatch.setattr(settings_module, "available_cores", lambda: cores)
    settings = Settings()
    assert codec_processes_per_worker(settings, workers_on_this_machine=workers) == expected
    stack = Stack(settings=settings, workers=workers)
    assert stack.worker_environment({"PIXPIPE_X": "1"}) == {
        "PIXPIPE_X": "1", "PIXPIPE_CODEC_PROCESSES": str(expected)}


def test_configured_codec_processes_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXPIPE_CODEC_PROCESSES", "3")
    monkeypatch.setattr(settings_module, "available_cores", lambda: 16)
    settings = Settings()
    assert codec_processes_per_worker(settings, workers_on_this_machine=4) == 3
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
