"""One logging configuration for the parent, every worker and every CLI command.

uvicorn applies `log_config` in each worker process it starts, so a worker's access lines and
warnings reach stderr like the parent's. uvicorn's own access log stays off: ours
(web/observe.py) logs paths without query strings, which hold patient data.

DICOMWEB_LOG_FORMAT=json writes each line, ours and uvicorn's alike, as one JSON object:
time (UTC, ISO 8601), level, logger, message and pid, plus what the request context knows
when the line belongs to a request: request_id, method, path, and site and user once set;
access lines add status and duration_ms, and a traced request its trace_id.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from dicomweb_server import telemetry

__all__ = [
    "GraceCutOffFilter",
    "JsonFormatter",
    "StderrHandler",
    "configure_logging",
    "log_config",
]

_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"
_ACCESS_FIELDS = ("status", "duration_ms")  # `extra` of the access line


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (orjson: never a newline inside a value's text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = telemetry.request_fields.get()
        if fields is not None:
            entry["request_id"] = fields.request_id
            entry["method"] = fields.method
            entry["path"] = fields.path
            if fields.site is not None:
                entry["site"] = fields.site
            if fields.user is not None:
                entry["user"] = fields.user
            if telemetry.tracer() is not None:
                from opentelemetry.trace import get_current_span

                context = get_current_span().get_span_context()
                if context.is_valid:
                    entry["trace_id"] = f"{context.trace_id:032x}"
        for name in _ACCESS_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines to whatever `sys.stderr` is when they are written, not the one of configuration
    time (a test runner swaps it per test and closes the old one; a server never does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stderr


class GraceCutOffFilter(logging.Filter):
    """uvicorn's lines for requests cut off when the shutdown grace period runs out, as one
    warning naming the setting.

    uvicorn logs an error saying how many tasks it cancels, then for each one "Exception in
    ASGI application" with the CancelledError's traceback: an expected outcome of
    DICOMWEB_SHUTDOWN_GRACE_SECONDS, not a fault. Matched on uvicorn's message texts; should
    they change, uvicorn's lines pass as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return not str(record.msg).startswith("Exception in ASGI application")
        if str(record.msg).startswith("Cancel ") and "graceful shutdown exceeded" in str(
            record.msg
        ):
            record.msg = (
                "cutting off %s request(s) still running: DICOMWEB_SHUTDOWN_GRACE_SECONDS ran out"
            )
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


class PluginFailureFilter(logging.Filter):
    """pydicom logs each codec plugin that fails on a frame with its traceback, at ERROR,
    then raises one error naming every plugin's failure, which we answer (a 406 naming it)
    or log ourselves. An undecodable image is the data's condition, not a fault: the
    tracebacks are dropped; pydicom's other lines (warnings) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


# pydicom's loggers that log a traceback per failing plugin (pydicom 3.0: pixels/*/base.py)
_PLUGIN_LOGGERS = ("pydicom.pixels.decoders.base", "pydicom.pixels.encoders.base")


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary: our loggers and uvicorn's at `level`."""
    upper = "DEBUG" if level.lower() == "trace" else level.upper()
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": _FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": formatter},
        "filters": {
            "grace": {"()": f"{__name__}.GraceCutOffFilter"},
            "plugin_failures": {"()": f"{__name__}.PluginFailureFilter"},
        },
        "handlers": {"stderr": {"()": f"{__name__}.StderrHandler", "formatter": "plain"}},
        "loggers": {
            "dicomweb_server": {"level": upper},
            "uvicorn": {"level": upper},
            "uvicorn.error": {"level": upper, "filters": ["grace"]},
            "uvicorn.access": {"level": "WARNING", "propagate": False, "handlers": []},
            **{name: {"filters": ["plugin_failures"]} for name in _PLUGIN_LOGGERS},
        },
        "root": {
            "level": "WARNING" if upper in ("INFO", "DEBUG") else upper,
            "handlers": ["stderr"],
        },
    }


def configure_logging(level: str, log_format: str = "text") -> None:
    """Apply `log_config(level, log_format)` to this process."""
    logging.config.dictConfig(log_config(level, log_format))
