"""STOW-RS (PS3.18 10.5): stream a multipart/related body into the store service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.domain.identifiers import validate_uid
from dicomweb_server.domain.stow_result import CANNOT_UNDERSTAND, StowResult
from dicomweb_server.errors import (
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from dicomweb_server.web.multipart import iter_parts, parse_media_type
from dicomweb_server.web.params import site_of
from dicomweb_server.web.state import AppState

__all__ = ["store_instances"]

log = logging.getLogger("dicomweb_server.store")
_MAX_WARNINGS = 20


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def store_instances(request: Request) -> Response:
    """POST /studies[/{study}]: store each application/dicom part; report per instance."""
    state: AppState = request.app.state.dicomweb
    settings = state.settings
    study = request.path_params.get("study")
    if study is not None:
        validate_uid(study, "StudyInstanceUID")
    header = request.headers.get("content-type", "").strip()
    if not header:
        raise UnsupportedMediaTypeError(
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom"'
        )
    media_type, params = parse_media_type(header)
    if media_type != "multipart/related":
        raise UnsupportedMediaTypeError(
            'STOW-RS takes multipart/related; type="application/dicom", not '
            + (media_type or "a request without Content-Type")
        )
    part_type = params.get("type", "").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaTypeError(
            f"multipart/related type {part_type or '(missing)'!r} is not supported;"
            ' send type="application/dicom"'
        )
    boundary = params.get("boundary")
    if not boundary:
        raise MalformedRequestError("multipart/related Content-Type has no boundary parameter")
    if request.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise UnsupportedMediaTypeError("Content-Encoding is not supported for STOW-RS bodies")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise PayloadTooLargeError(
            f"request body of {declared} bytes exceeds the limit of {settings.max_request_bytes}"
        )

    result = StowResult()
    site = site_of(request)
    parts = iter_parts(
        _limited(request.stream(), settings.max_request_bytes),
        boundary,
        max_part_size=settings.max_part_bytes,
        max_parts=settings.max_parts,
        spool_memory=settings.spool_memory_bytes,
        max_boundary_length=settings.max_boundary_length,
    )
    store = state.store.request(
        site,
        study,
        result,
        depth=settings.store_pipeline_depth,
        batch=settings.store_index_batch,
    )
    async with store:
        async for part in parts:
            reason = _unsupported_part(part.content_type)
            if reason is None:
                await store.add(part.file)  # the pipeline closes the part
            else:
                part.close()
                store.add_failed(CANNOT_UNDERSTAND, reason)

    body = orjson.dumps(result.to_json(settings.root_url, study))
    response = Response(body, status_code=result.status, media_type="application/dicom+json")
    for text in result.failure_texts[:_MAX_WARNINGS]:
        response.headers.append("Warning", f'299 dicomweb-server "{_header_safe(text)}"')
    if result.failed:
        log.info("STOW stored %d, failed %d", len(result.stored), len(result.failed))
    return response


def _unsupported_part(content_type: str | None) -> str | None:
    """Why a part cannot be stored as an instance, or None for application/dicom."""
    if content_type is None:
        return "a part has no Content-Type"
    try:
        part_media, _ = parse_media_type(content_type)
    except MalformedRequestError as exc:
        return exc.reason
    if part_media != "application/dicom":
        return f"a part has Content-Type {part_media!r}, not application/dicom"
    return None


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c != '"' else "'" if c == '"' else "?" for c in text)
