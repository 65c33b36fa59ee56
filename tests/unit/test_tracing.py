"""pixpipe.tracing: the trace context through message headers, and nothing at all when off."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pixpipe import tracing

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans, in memory. The API lets a process set its tracer provider
    once, so the provider stays for the rest of the session; only the exporter goes."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def test_a_job_span_continues_the_trace_its_headers_carry(spans: InMemorySpanExporter) -> None:
    spans.clear()
    with tracing.span("upload", kind="server") as upload:
        headers = tracing.inject({"Nats-Msg-Id": "r.i"})
    assert upload is not None
    match = TRACEPARENT.fullmatch(headers["traceparent"])
    assert match is not None
    assert headers["Nats-Msg-Id"] == "r.i"
    assert match.groups() == (f"{upload.get_span_context().trace_id:032x}",
                              f"{upload.get_span_context().span_id:016x}")

    # Elsewhere, later, with no span current: the message's headers say where it belongs.
    with tracing.span("process image", kind="consumer", parent=tracing.extract(headers),
                      attributes={"pixpipe.image_id": "i"}) as job, tracing.span("fetch"):
        tracing.annotate({"pixpipe.outcome": "completed"})
    assert job is not None

    finished = {span.name: span for span in spans.get_finished_spans()}
    assert set(finished) == {"upload", "process image", "fetch"}
    trace_ids = {span.context.trace_id for span in finished.values()}
    assert trace_ids == {upload.get_span_context().trace_id}
    assert finished["process image"].parent is not None
    assert finished["process image"].parent.span_id == upload.get_span_context().span_id
    assert finished["process image"].kind == trace.SpanKind.CONSUMER
    assert finished["fetch"].parent is not None
    assert finished["fetch"].parent.span_id == job.get_span_context().span_id
    assert dict(finished["fetch"].attributes or {}) == {"pixpipe.outcome": "completed"}


def test_one_set_of_headers_serves_every_job_of_a_request(
        spans: InMemorySpanExporter) -> None:
    with tracing.span("upload"):
        shared = tracing.trace_headers()
    parents = set()
    for _ in range(3):
        with tracing.span("process image", headers=shared) as job:
            assert job is not None and job.parent is not None  # type: ignore[attr-defined]
            parents.add(job.parent.span_id)  # type: ignore[attr-defined]
    assert len(parents) == 1


def test_a_message_without_a_context_starts_no_child(spans: InMemorySpanExporter) -> None:
    assert tracing.extract(None) is None
    assert tracing.extract({}) is None
    # The message's headers decide, even inside another span.
    with tracing.span("polling"), tracing.span("request completed",
                                               headers={"Nats-Msg-Id": "x"}) as root:
        assert root is not None
    assert root.parent is None  # type: ignore[attr-defined]
    assert tracing.trace_headers() == {}  # no span is current


def test_recent_contexts_keep_the_last_ones(spans: InMemorySpanExporter) -> None:
    recent = tracing.RecentContexts(size=2)
    for request_id in ("a", "b", "c"):
        with tracing.span(request_id):
            recent.note(request_id, tracing.current_context())
    recent.note("d", None)
    assert recent.get("a") is None and recent.get("d") is None
    context = recent.get("c")
    with tracing.span("webhook delivery", parent=context) as delivery:
        assert delivery is not None
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert finished["webhook delivery"].parent == finished["c"].context


def run_python(code: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter, where no tracer provider is set yet."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, env={**env, **environment})


NO_OP_CHECKS = """
assert not tracing.enabled() and tracing.tracer() is None
with tracing.span("upload", attributes={"a": 1}) as span:
    assert span is None
    assert tracing.trace_headers() == {}
    assert tracing.inject({"Nats-Msg-Id": "x"}) == {"Nats-Msg-Id": "x"}
    tracing.annotate({"b": 2})
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
assert tracing.extract({"traceparent": parent}) is None
assert tracing.current_context() is None
"""


def test_off_is_a_no_op() -> None:
    run_python("from pixpipe import tracing\n"
               "assert tracing.configure_tracing('pixpipe-test', 'off') is False\n"
               "from opentelemetry import trace\n"
               "assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)\n"
               + NO_OP_CHECKS)


def test_without_opentelemetry_tracing_stays_off() -> None:
    result = run_python("import sys\n"
                        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
                        "from pixpipe import tracing\n"
                        "assert not tracing.INSTALLED\n"
                        "assert tracing.configure_tracing('pixpipe-test', 'otlp') is False\n"
                        + NO_OP_CHECKS)
    assert "OpenTelemetry is not installed" in result.stderr


def console_spans(**environment: str) -> list[dict[str, object]]:
    result = run_python("from pixpipe import tracing\n"
                        "assert tracing.configure_tracing('pixpipe-test', 'console')\n"
                        "with tracing.span('upload', kind='server'):\n"
                        "    with tracing.span('publish'):\n"
                        "        pass\n", **environment)  # exported at exit
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_console_spans_are_one_json_line_each() -> None:
    publish, upload = console_spans()
    assert (publish["name"], upload["name"]) == ("publish", "upload")
    assert publish["parent_id"] == upload["context"]["span_id"]  # type: ignore[index]
    assert upload["kind"] == "SpanKind.SERVER"
    assert upload["resource"]["attributes"]["service.name"] == "pixpipe-test"  # type: ignore[index]


def test_the_standard_variables_name_the_service() -> None:
    (publish, _upload) = console_spans(OTEL_SERVICE_NAME="catalogue-ingest")
    assert publish["resource"]["attributes"]["service.name"] == "catalogue-ingest"  # type: ignore[index]
