"""Prometheus metrics of each service, on a registry of its own (no process-wide state)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    """Expose ``registry`` on http://host:port/metrics when a port is configured."""
    if port:
        start_http_server(port, addr=host, registry=registry)


# A failure's label is one of these fixed kinds, never the reason's own text: reasons carry
# what a remote source sent (a content type, an error message), and every distinct label value
# is a new time series for Prometheus to keep.
_FAILURE_KINDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), kind) for pattern, kind in (
        (r"^HTTP 4\d\d ", "http_4xx"),
        (r"^HTTP 5\d\d ", "http_5xx"),
        (r"^HTTP ", "http_other"),
        (r"^not an image", "not_an_image"),
        (r"^image larger than ", "too_large"),
        (r"^image exceeds .* megapixels$", "too_many_pixels"),
        (r"^needs more memory than ", "too_much_memory"),
        (r"^(timed out|took longer)", "timeout"),
        (r"^source address not allowed$", "address_not_allowed"),
        (r"^could not resolve host$", "dns"),
        (r"^(could not connect|connection to source failed)", "connection"),
        (r"^incomplete or malformed response", "bad_response"),
        (r"^(invalid (redirect )?URL|redirect to a non-HTTP)", "invalid_url"),
        (r"^too many redirects$", "redirects"),
        (r"^truncated image data$", "truncated"),
        (r"^corrupt ", "corrupt"),
        (r"^image processor crashed$", "crashed"),
        (r"^gave up after ", "gave_up"),
    ))
FAILURE_KINDS = frozenset(kind for _, kind in _FAILURE_KINDS) | {"other"}


def failure_kind(reason: str) -> str:
    """The fixed label for a failure reason; ``other`` for anything unforeseen."""
    return next((kind for pattern, kind in _FAILURE_KINDS if pattern.search(reason)), "other")


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.images = Counter("pixpipe_images", "Images settled by this worker",
                              ["outcome"], registry=self.registry)
        self.failures = Counter("pixpipe_image_failures", "Failed images by kind of reason",
                                ["reason"], registry=self.registry)
        self.retries = Counter("pixpipe_job_retries", "Jobs handed back for a later attempt",
                               registry=self.registry)
        self.in_flight = Gauge("pixpipe_jobs_in_flight", "Jobs this worker holds now",
                               registry=self.registry)
        self.seconds = Histogram("pixpipe_image_seconds", "Fetch-to-record time per image",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)


@dataclass
class NotifierMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.queue_depth = Gauge("pixpipe_queue_depth", "Jobs waiting in JetStream",
                                 registry=self.registry)
        self.jobs_unacknowledged = Gauge("pixpipe_jobs_unacknowledged",
                                         "Jobs delivered to workers and not yet settled",
                                         registry=self.registry)
        self.webhook_backlog = Gauge("pixpipe_webhook_backlog",
                                     "Webhook deliveries waiting to succeed",
                                     registry=self.registry)
        self.watchers = Gauge("pixpipe_watchers", "Connected status watchers",
                              registry=self.registry)
        self.webhook_attempts = Counter("pixpipe_webhook_attempts", "Webhook POSTs made",
                                        ["result"], registry=self.registry)


@dataclass
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.uploads = Counter("pixpipe_uploads", "Uploads by result", ["result"],
                               registry=self.registry)
        self.images_queued = Counter("pixpipe_images_queued", "Image jobs published",
                                     registry=self.registry)
