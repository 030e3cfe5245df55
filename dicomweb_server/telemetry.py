"""Metrics, traces and log context: the instruments any layer may use (→ nothing internal).

Metrics are prometheus-client objects in its default registry. `dicomweb-server serve` with
several workers sets PROMETHEUS_MULTIPROC_DIR before they start (serve/metrics.py), so each
worker writes its values to files there and `/metrics` adds them up: the numbers are the
server's, not one worker's. Every metric has a label, so importing this module creates no
file (the directory may not exist yet in the process that imports it first).

Tracing is off until `use_tracer_provider` is given a provider (serve/tracing.py does, from
the OTEL_* variables; tests do, with an in-memory exporter). While it is off no OpenTelemetry
code runs: callers test `tracer()` for None, and the API is not even imported.

The request context (`request_fields`) carries what log lines say about the request they
belong to: its id, method and path, and the site and user once something sets them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = [
    "BUILD_INFO",
    "CACHE_LOOKUPS",
    "CODEC_SECONDS",
    "EVENT_BACKLOG",
    "FRAMES_READ_AHEAD",
    "FRAME_MEMORY_READS",
    "INDEX_CONNECTIONS",
    "OBJECT_STORE_ERRORS",
    "OBJECT_STORE_SECONDS",
    "REQUEST_BYTES",
    "REQUEST_SECONDS",
    "RESPONSE_BYTES",
    "STORED_INSTANCES",
    "STORE_FAILURES",
    "RequestFields",
    "codec_run",
    "exposition",
    "record_stow",
    "request_fields",
    "server_version",
    "set_event_backlog",
    "set_request_site",
    "set_request_user",
    "span",
    "tracer",
    "use_tracer_provider",
]

# Request latencies from a cached metadata answer (~1 ms) to a study retrieve (minutes).
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUEST_SECONDS = Histogram(
    "dicomweb_request_duration_seconds",
    "HTTP requests by PS3.18 transaction, status class and site: time to the last byte sent"
    " (its _count is the number of requests)",
    ["transaction", "status", "site"],
    buckets=_REQUEST_BUCKETS,
)
REQUEST_BYTES = Counter(
    "dicomweb_request_body_bytes", "Request body bytes received", ["transaction", "site"]
)
RESPONSE_BYTES = Counter(
    "dicomweb_response_body_bytes",
    "Response body bytes sent (files sent by sendfile included)",
    ["transaction", "site"],
)
STORED_INSTANCES = Counter(
    "dicomweb_stored_instances", "Instances STOW-RS stored (or found already stored)", ["site"]
)
STORE_FAILURES = Counter(
    "dicomweb_store_failures",
    "Parts STOW-RS did not store, by failure reason (PS3.18 10.5.3)",
    ["site", "reason"],
)
CODEC_SECONDS = Histogram(
    "dicomweb_codec_duration_seconds",
    "Codec work (transcode, render, attributes), waiting for a codec thread included",
    ["kind"],
    buckets=_FAST_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "dicomweb_derived_cache_lookups",
    "Derived-data cache lookups in the blob store (transcoded frames, rendered images)",
    ["kind", "result"],
)
FRAME_MEMORY_READS = Counter(
    "dicomweb_frame_memory_reads",
    "Stored frames of objects in S3 asked for, by where they came from: memory (kept),"
    " waited (a read-ahead was bringing it) or store (read on its own)",
    ["result"],
)
FRAMES_READ_AHEAD = Counter(
    "dicomweb_frames_read_ahead",
    "Stored frames of objects in S3 brought into memory by a frames request's read-ahead",
)
OBJECT_STORE_SECONDS = Histogram(
    "dicomweb_object_store_duration_seconds",
    "Object store requests (a get until its first bytes, a put until stored)",
    ["operation"],
    buckets=_FAST_BUCKETS,
)
OBJECT_STORE_ERRORS = Counter(
    "dicomweb_object_store_errors", "Object store requests that failed", ["operation"]
)
INDEX_CONNECTIONS = Gauge(
    "dicomweb_index_connections",
    "Index database connections of the live workers: open, in_use and max (the pool limit)",
    ["state"],
    multiprocess_mode="livesum",
)
EVENT_BACKLOG = Gauge(
    "dicomweb_event_backlog",
    "Events written but not yet delivered (set by the event deliverer)",
    ["queue"],
    multiprocess_mode="livemax",
)
BUILD_INFO = Gauge(
    "dicomweb_build_info",
    "The server's version (always 1)",
    ["version"],
    multiprocess_mode="livemax",
)

# PS3.18 10.5.3 FailureReason codes → label values (domain/stow_result.py has the constants).
_FAILURE_REASONS = {
    0x0110: "processing_failure",
    0x0111: "duplicate_sop_instance",
    0xA700: "out_of_resources",
    0xA900: "data_set_does_not_match",
    0xC000: "cannot_understand",
}


def server_version() -> str:
    """The installed dicomweb-server's version."""
    try:
        return metadata.version("dicomweb-server")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0+unknown"


# -- request context (logs) ------------------------------------------------------------------


@dataclass(slots=True)
class RequestFields:
    """What a log line written while serving a request says about it (never a query string)."""

    request_id: str
    method: str
    path: str
    site: str | None = None
    user: str | None = None


request_fields: ContextVar[RequestFields | None] = ContextVar("dicomweb_request", default=None)


def set_request_user(user: str) -> None:
    """Name the authenticated caller in the current request's log lines (access control)."""
    fields = request_fields.get()
    if fields is not None:
        fields.user = user


def set_request_site(site: str) -> None:
    """Name the site of the current request in its log lines and metrics."""
    fields = request_fields.get()
    if fields is not None:
        fields.site = site


# -- metrics hooks -----------------------------------------------------------------------------


def record_stow(site: str, stored: int, failure_reasons: list[int]) -> None:
    """Count one STOW request's stored instances and failed parts."""
    if stored:
        STORED_INSTANCES.labels(site).inc(stored)
    for code in failure_reasons:
        STORE_FAILURES.labels(site, _FAILURE_REASONS.get(code, f"0x{code:04X}")).inc()


def set_event_backlog(count: int, queue: str = "outbox") -> None:
    """The number of events not yet delivered: for the event deliverer to report."""
    EVENT_BACKLOG.labels(queue).set(count)


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics page (body, media type): every worker's values added up in multi-process
    mode, else this process's (with its CPU, memory and garbage-collector metrics)."""
    BUILD_INFO.labels(server_version()).set(1)
    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encoder, media_type = choose_encoder(accept or "")
    return encoder(registry), media_type


# -- tracing -----------------------------------------------------------------------------------

_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """The tracer spans are started with, or None while tracing is off."""
    return _tracer


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace with `provider` from now on (None: stop tracing)."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("dicomweb_server", server_version())


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child span of the current one around the block, when tracing is on."""
    current = _tracer
    if current is None:
        yield
        return
    with current.start_as_current_span(name, attributes=attributes):
        yield


@contextmanager
def codec_run(kind: str) -> Iterator[None]:
    """Time one piece of codec work of `kind` (transcode, render, attributes), with a span."""
    started = time.perf_counter()
    try:
        with span(f"codec.{kind}"):
            yield
    finally:
        _codec_histogram(kind).observe(time.perf_counter() - started)


_codec_children: dict[str, Any] = {}


def _codec_histogram(kind: str) -> Any:
    child = _codec_children.get(kind)
    if child is None:
        child = _codec_children[kind] = CODEC_SECONDS.labels(kind)
    return child
