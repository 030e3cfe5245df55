"""Issue 21: a request's span has child spans for the index, the object store and codec work;
tracing follows the OTEL_* variables and costs nothing (not even an import) while off."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from dicomfiles import ct_dataset, multipart_body, to_part10
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dicomweb_server import telemetry
from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.serve.tracing import configure_tracing, tracing_problem, tracing_requested

BASE = "http://testserver/dicomweb"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    telemetry.use_tracer_provider(provider)
    try:
        yield memory
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


@pytest_asyncio.fixture
async def traced(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, created while tracing is on (as serve/worker.py does)."""
    app = create_app(Settings(data_dir=tmp_path / "data", base_url=BASE))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    found = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        found.append(span)
    return found


async def test_issue21_request_span_has_index_object_store_and_codec_children(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    ds = ct_dataset(rows=32, columns=32)
    body, content_type = multipart_body([to_part10(ds)])
    assert (
        await traced.post("/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    exporter.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    rendered = await traced.get(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered",
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert rendered.status_code == 200

    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    (server,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert (
        server.name == "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered"
    )
    assert f"{server.context.trace_id:032x}" == trace_id  # continues the client's trace
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["dicomweb.transaction"] == "rendered"
    assert server.attributes["dicomweb.site"] == "default"
    assert ds.SOPInstanceUID not in server.name  # route templates, never UIDs
    children = {span.name for span in spans if server in _ancestors(span, by_id)}
    assert "index.get_instance" in children, children
    assert any(name.startswith("object_store.") for name in children), children
    assert "codec.render" in children, children


async def test_issue21_store_spans_its_object_store_writes_and_index_batch(
    traced: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    assert (
        await traced.post("/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    (server,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert server.name == "POST /dicomweb/studies"
    children = {span.name for span in spans if server in _ancestors(span, by_id)}
    assert {"object_store.put", "index.add_instances"} <= children, children


def test_issue21_tracing_is_off_unless_asked_for() -> None:
    settings = Settings()
    assert not tracing_requested(settings, {})
    assert tracing_requested(settings.replace(tracing=True), {})
    assert tracing_requested(settings, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing_requested(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_requested(
        settings, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}
    )
    assert not tracing_requested(settings, {"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_requested(settings.replace(tracing=True), {"OTEL_SDK_DISABLED": "true"})
    assert tracing_problem(settings, {"OTEL_TRACES_EXPORTER": "zipkin"}) == (
        "OTEL_TRACES_EXPORTER 'zipkin' is not supported (otlp, console, none)"
    )
    assert tracing_problem(settings, {"OTEL_TRACES_EXPORTER": "console"}) is None


def test_issue21_configure_tracing_names_the_service_and_honours_otel_service_name() -> None:
    try:
        provider = configure_tracing(Settings(), {"OTEL_TRACES_EXPORTER": "console"})
        assert provider is not None
        assert telemetry.tracer() is not None
        assert provider.resource.attributes["service.name"] == "dicomweb-server"
        assert provider.resource.attributes["service.version"] == telemetry.server_version()
        provider.shutdown()
    finally:
        telemetry.use_tracer_provider(None)
    assert configure_tracing(Settings(), {}) is None
    assert telemetry.tracer() is None


def test_issue21_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    script = f"""
import asyncio, sys, httpx
from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.serve.worker import create_worker_app

async def main():
    app = create_app(Settings(data_dir={str(tmp_path)!r}))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/dicomweb/studies")).status_code == 200
asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {"PATH": "/usr/bin:/bin", "DICOMWEB_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
