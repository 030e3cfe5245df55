"""The one exception handler: DicomwebError → its status with a readable reason; else 500."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.errors import DicomwebError

__all__ = ["EXCEPTION_HANDLERS", "error_response"]

log = logging.getLogger("dicomweb_server.web")


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error body: {"status": ..., "reason": ...}."""
    body = orjson.dumps({"status": status, "reason": reason})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _dicomweb_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomwebError)
    if exc.status >= 500:
        # The detail (hosts, buckets, keys, SQLSTATEs) is for the log, never the client.
        request_id = _request_id(request)
        log.warning("request %s failed: %s", request_id, exc.reason)
        return error_response(exc.status, f"{exc.public_reason} (request id {request_id})")
    return error_response(exc.status, exc.reason)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("request %s failed unexpectedly", _request_id(request))
    return error_response(500, f"internal error (request id {_request_id(request)})")


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


EXCEPTION_HANDLERS = {
    DicomwebError: _dicomweb_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
