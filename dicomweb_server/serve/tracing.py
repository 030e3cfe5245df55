"""OpenTelemetry traces for a worker, configured by the standard OTEL_* variables.

Off unless DICOMWEB_TRACING=true, OTEL_TRACES_EXPORTER names an exporter, or an OTLP endpoint
is set (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); OTEL_SDK_DISABLED=true
or OTEL_TRACES_EXPORTER=none turn it off. The SDK reads the rest itself: OTEL_SERVICE_NAME
and OTEL_RESOURCE_ATTRIBUTES (service.name defaults to dicomweb-server), OTEL_TRACES_SAMPLER
and its argument, and the exporter's OTEL_EXPORTER_OTLP_* endpoint, headers, timeout and
protocol (http/protobuf by default, or grpc). Exporters: otlp (default), console.

The SDK and the exporters are the `tracing` extra (pip install 'dicomweb-server[tracing]');
tracing asked for without them stops `serve` before it starts, with one line saying so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dicomweb_server import telemetry
from dicomweb_server.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["configure_tracing", "tracing_problem", "tracing_requested"]

_SERVICE_NAME = "dicomweb-server"
_EXTRA = "pip install 'dicomweb-server[tracing]'"


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _exporters(environ: Mapping[str, str]) -> list[str]:
    text = environ.get("OTEL_TRACES_EXPORTER", "")
    return [name.strip().lower() for name in text.split(",") if name.strip()]


def tracing_requested(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this server should trace (see the module docstring)."""
    env = _environ(environ)
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(env)
    if exporters == ["none"]:
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return settings.tracing or bool(exporters) or bool(endpoint)


def _protocol(environ: Mapping[str, str]) -> str:
    return (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER {name!r} is not supported (otlp, console, none)")
    protocol = _protocol(environ)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported (http/protobuf, grpc)"
    )


def tracing_problem(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """Why tracing cannot start as asked (one line), or None when it can or is off."""
    env = _environ(environ)
    if not tracing_requested(settings, env):
        return None
    try:
        import opentelemetry.sdk.trace  # noqa: F401

        for name in _exporters(env) or ["otlp"]:
            _exporter(name, env)
    except ImportError as exc:
        return f"tracing needs the OpenTelemetry SDK and exporters ({_EXTRA}): {exc}"
    except ValueError as exc:
        return str(exc)
    return None


def configure_tracing(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Start tracing in this process when asked for; the provider (None: tracing is off)."""
    env = _environ(environ)
    if not tracing_requested(settings, env):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.version": telemetry.server_version()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": _SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER is read here
    for name in _exporters(env) or ["otlp"]:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    telemetry.use_tracer_provider(provider)
    return provider
